"""Leads: call events, intents, operator actions, conversations, sales and the
offline-conversion enqueue (SPEC §4, §5). Domain core: no gateway or actor imports."""
