"""Read models folded from the notification log: desired state, person index (and, later, the audit index)."""
