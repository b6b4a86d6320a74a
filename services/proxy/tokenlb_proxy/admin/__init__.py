"""The Kong-compatible Admin API: CRUD on the fleet's flat config document."""
