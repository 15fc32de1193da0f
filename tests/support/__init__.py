"""Helpers the tests share: real processes (our console scripts, moto_server), started on
free loopback ports and always stopped, with deadlines instead of sleeps."""
