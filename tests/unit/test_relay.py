"""The relay in-process replicas reach their Lighthouse through (trainer/elastic/relay.py):
it forwards to where coordd says the Lighthouse runs, and a move cuts what it holds."""

from __future__ import annotations

import socket
import socketserver
import threading

import pytest

from trainer.elastic.relay import Relay


class Named(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(100):
            self.request.sendall(self.server.name + data)


@pytest.fixture
def servers():
    made = []
    for name in (b"a:", b"b:"):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Named)
        server.daemon_threads, server.name = True, name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(server)
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in made]
    for server in made:
        server.shutdown()
        server.server_close()


def ask(conn: socket.socket, text: bytes) -> bytes:
    conn.sendall(text)
    return conn.recv(100)


def test_a_move_cuts_the_open_connection_and_the_next_reaches_the_new_place(servers):
    relay = Relay(servers[0])
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as before:
        assert ask(before, b"hi") == b"a:hi"
        relay.point(servers[1])
        assert before.recv(100) == b""  # cut: torchft reconnects
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as after:
        assert ask(after, b"hi") == b"b:hi"
    relay.point("no port here")  # a bad address leaves it where it was
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as again:
        assert ask(again, b"hi") == b"b:hi"


def test_nothing_listening_there_closes_the_connection(servers):
    from tests.net import free_port
    relay = Relay(f"127.0.0.1:{free_port()}")
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
        assert conn.recv(100) == b""
