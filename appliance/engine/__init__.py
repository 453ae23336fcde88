"""The processing engine: user Python plugins run on writes, on schedules and on HTTP requests."""
