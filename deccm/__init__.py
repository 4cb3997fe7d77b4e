"""deccm."""
