"""What crosses a process boundary: messages, config, Redis key names, errors and logging setup."""
