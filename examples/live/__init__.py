"""A live chaos lab for ftml: a real service with a fault switch, load, a supervisor-style
restart, training on the service's own history and ``ftml watch --mode auto`` over it.
See docs/chaos.md."""
