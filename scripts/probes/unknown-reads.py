# 60 000 getValue calls on names never written, over a few keep-alive connections; prints the
# server's RSS before and after (and 15 s later, past --idle-timeout).
import http.client, json, sys, time, threading
pid, port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def work(start, n):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(start, start + n):
        body = json.dumps({"name": f"never-{i}"})
        c.request("POST", "/rpc/counter.getValue", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
before = rss()
threads = [threading.Thread(target=work, args=(k * (count // 4), count // 4)) for k in range(4)]
t0 = time.time()
[t.start() for t in threads]; [t.join() for t in threads]
after = rss()
c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/metrics"); m = c.getresponse().read().decode()
held = [l for l in m.splitlines() if l.startswith(("tally_counters_in_memory", "tally_counters_held"))]
time.sleep(15)
later = rss()
print(f"reads {count} in {time.time()-t0-15:.1f}s; RSS KiB before {before} after {after} (+{after-before}) 15s later {later} (+{later-before}); {held}")
