#!/usr/bin/env python3
"""Opens COUNT client connections to a pooler, logs each in (trust or md5), and holds them idle.

    hold-clients.py HOST PORT USER PASSWORD DATABASE COUNT

Prints "ready N" once N connections have received ReadyForQuery, then keeps them open until its standard
input closes. scripts/bench.sh reads the pooler's RSS before and after to report memory per idle client.
"""
import hashlib
import socket
import struct
import sys


def message(sock):
    header = b""
    while len(header) < 5:
        chunk = sock.recv(5 - len(header))
        if not chunk:
            raise ConnectionError("closed during login")
        header += chunk
    kind, length = header[:1], struct.unpack("!i", header[1:])[0]
    body = b""
    while len(body) < length - 4:
        chunk = sock.recv(length - 4 - len(body))
        if not chunk:
            raise ConnectionError("closed during login")
        body += chunk
    return kind, body


def login(host, port, user, password, database):
    sock = socket.create_connection((host, port))
    params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    while True:
        kind, body = message(sock)
        if kind == b"R":
            code = struct.unpack("!i", body[:4])[0]
            if code == 5:  # md5
                inner = hashlib.md5((password + user).encode()).hexdigest()
                digest = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                payload = digest.encode() + b"\0"
                sock.sendall(b"p" + struct.pack("!i", 4 + len(payload)) + payload)
            elif code == 3:  # clear text
                payload = password.encode() + b"\0"
                sock.sendall(b"p" + struct.pack("!i", 4 + len(payload)) + payload)
            elif code != 0:
                raise ConnectionError(f"unsupported authentication request {code}")
        elif kind == b"E":
            raise ConnectionError(body.decode(errors="replace"))
        elif kind == b"Z":
            return sock


def main():
    host, port, user, password, database, count = sys.argv[1:7]
    held = [login(host, int(port), user, password, database) for _ in range(int(count))]
    print(f"ready {len(held)}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
