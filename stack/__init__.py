"""Local servers for the stack command and the test suite: Redis, PostgreSQL
shards, radiusd with the project's raddb, batch_writer. Loopback only, state
under one folder, every process stopped by its PID."""
