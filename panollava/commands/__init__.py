"""Light command implementations (may print)."""
