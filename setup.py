"""Build hook: the wheel carries the top-level ``migrations/`` folder as
``opsmantik_stream/migrations/``.

The repository keeps ``migrations/`` at its top (a fixed layout), but setuptools' package
data only reaches files inside a package, and an installed ``opsmantik`` must be able to
migrate on its own. So ``build_py`` copies the folder into the built package. An editable
install (``make install``) needs no copy: ``opsmantik_stream.migrate`` falls back to the
checkout's folder. It also builds the one C extension (``PGROWS`` below). Everything else
about the build lives in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
TARGET = ("opsmantik_stream", "migrations")


class BuildPyWithMigrations(build_py):
    def _migration_files(self) -> list[tuple[Path, Path]]:
        target = Path(self.build_lib, *TARGET)
        return [(sql, target / sql.name) for sql in sorted(MIGRATIONS.glob("*.sql"))]

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        files = self._migration_files()
        if not files:
            raise SystemExit(f"no migrations found in {MIGRATIONS}: the package could not migrate")
        self.mkpath(str(files[0][1].parent))
        for source, target in files:
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [str(target) for _, target in self._migration_files()]
        return outputs


# The partition's row encoder (opsmantik_stream/ingest/_pgrows.c, why it exists: its head).
# Optional: without a C compiler the install goes on and the partition encodes its batch
# rows through asyncpg's own codecs (slower, the same rows).
PGROWS = Extension("opsmantik_stream.ingest._pgrows", ["opsmantik_stream/ingest/_pgrows.c"], optional=True)

setup(cmdclass={"build_py": BuildPyWithMigrations}, ext_modules=[PGROWS])
