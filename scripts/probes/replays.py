# 1 000 WebSocket resumes with since=0 of a 10 000-update counter that never read; samples the
# kernel's TCP memory (/proc/net/sockstat, pages) and the server's open sockets. Each socket
# binds to 127.0.0.(1 + i % ADDRESSES) first, so the per-address and total bounds both show.
import base64, http.client, json, os, socket, sys, threading, time
port, count, addresses = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def tcp_mem_pages():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            parts = line.split()
            return int(parts[parts.index("mem") + 1])
def metric(name):
    c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.split()[-1])
    return total
def write(n):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n):
        c.request("POST", "/rpc/counter.increment", '{"name":"big"}', {"Content-Type": "application/json"})
        r = c.getresponse(); r.read(); assert r.status == 200
threads = [threading.Thread(target=write, args=(2500,)) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
base = tcp_mem_pages()
print(f"counter written; TCP mem before: {base} pages")
socks = []
t0 = time.time()
for i in range(count):
    s = socket.socket()
    s.bind((f"127.0.0.{1 + i % addresses}", 0))
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws/counter/big?since=0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    socks.append(s)
print(f"{count} resumes sent in {time.time()-t0:.1f}s from {addresses} addresses")
peak = 0
C4000 = 'tally_websocket_closes_total{code="4000"}'
C4001 = 'tally_websocket_closes_total{code="4001"}'
while True:
    mem = tcp_mem_pages(); peak = max(peak, mem)
    opened = metric("tally_websockets_open")
    elapsed = time.time() - t0
    if int(elapsed) % 2 == 0:
        print(f"t={elapsed:5.1f}s tcp mem {mem} pages ({mem*4096/2**20:.0f} MiB) websockets_open {opened:.0f} replays_running {metric('tally_replays_running'):.0f}", flush=True)
    if opened == 0 or elapsed > 75:
        break
    time.sleep(1)
print(f"peak TCP mem {peak} pages = {peak*4096/2**20:.0f} MiB (before: {base*4096/2**20:.0f} MiB); "
      f"closes 4000(stalled) {metric(C4000):.0f}, "
      f"4001(ping) {metric(C4001):.0f}; "
      f"refused {metric('tally_replays_refused_total'):.0f}; replay bytes {metric('tally_replay_bytes_total'):.0f}; all closed after {time.time()-t0:.0f}s")
for s in socks: s.close()
