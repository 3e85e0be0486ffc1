#!/usr/bin/env python3
"""Issue 16's close probe: N sockets (v1 and v2 in turn) each send one random WebSocket frame to a
running `tally serve`; prints how they ended: the close code read (none: the client sees 1006)
and whether the connection then ended with a FIN or a reset.

Usage: scripts/close-probe.py HOST PORT N SEED   (docs/RELIABILITY.md has the figures)."""
import random, socket, struct, sys, collections
host, port, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
ends = collections.Counter()
for i in range(n):
    path = "/ws/counter/probe" if i % 2 == 0 else "/ws"
    s = socket.create_connection((host, port), timeout=10)
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    first = rng.randrange(256)
    masked = rng.random() < 0.7
    length = rng.choice([rng.randrange(126), rng.randrange(126, 5000), rng.randrange(5000, 200000)])
    payload = bytes(rng.randrange(256) for _ in range(min(length, 2000))) * (length // 2000 + 1)
    payload = payload[:length]
    if length < 126: hdr = bytes([first, (0x80 if masked else 0) | length])
    elif length < 65536: hdr = bytes([first, (0x80 if masked else 0) | 126]) + struct.pack(">H", length)
    else: hdr = bytes([first, (0x80 if masked else 0) | 127]) + struct.pack(">Q", length)
    frame = hdr + (b"\x01\x02\x03\x04" if masked else b"") + payload
    code = None
    try:
        s.sendall(frame)
    except OSError:
        pass
    how = None
    while how is None:
        # Parse frames from buf.
        while len(buf) >= 2:
            l = buf[1] & 0x7f; st = 2
            if l == 126:
                if len(buf) < 4: break
                l = struct.unpack(">H", buf[2:4])[0]; st = 4
            elif l == 127:
                if len(buf) < 10: break
                l = struct.unpack(">Q", buf[2:10])[0]; st = 10
            if len(buf) < st + l: break
            if buf[0] & 0x0f == 8 and code is None:
                code = struct.unpack(">H", buf[st:st+2])[0] if l >= 2 else 1005
            buf = buf[st + l:]
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            how = "reset"; break
        except socket.timeout:
            how = "open"; break
        if not chunk:
            how = "fin"
        buf += chunk
    s.close()
    ends[(code, how)] += 1
for (code, how), count in sorted(ends.items(), key=lambda kv: -kv[1]):
    print(f"{count:4d}  close {code if code is not None else 'none (1006)'}  then {how}")
