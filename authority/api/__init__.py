"""HTTP routes of the authority, versioned under /api/v1."""
