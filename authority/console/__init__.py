"""The web administration console: its accounts and sessions, pages, templates and assets."""
