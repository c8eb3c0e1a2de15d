"""Unit tests of the authority's web console: its pages, views and forms."""
