"""Helpers the tests share: real processes (our console scripts, moto_server), started on
free loopback ports and always stopped, with deadlines instead of sleeps; and `wait.until`,
the one way a test waits for what a real process, socket or thread will do."""
