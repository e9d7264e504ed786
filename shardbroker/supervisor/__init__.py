"""The supervisor process: segment owner, acceptor, receiver spawner and reaper."""
