#!/usr/bin/env python3
"""Redis's CPU per entry for one consuming stage, done two ways, against a private redis-server.

Usage: scripts/consume-experiment.py [ENTRIES] [BATCH ...]   (defaults: 50000, batches 100 10 1)

A stream is filled with ENTRIES entries shaped like `CommentCreated` (the envelope's five fields,
a comment of about 60 characters), and a group reads it, BATCH entries at a time, two ways:
- delivered (blogctl's way): `XREADGROUP` delivers the entries to this client, which sends them
  back as the `ARGV` of one step script per batch; the script claims each entry (`XACK`) and
  writes the view's field (`HSETNX`), each entry under its own `pcall`, like the services' steps.
- in-script: one script per batch reads the entries itself (`XREADGROUP ... NOACK` inside Lua),
  decodes each envelope's data and writes the same field. Nothing is delivered to the client and
  no entry is pending, so there is no claim: a lower bound, not a design that keeps blogctl's
  take-over, retries and dead letters.
The two ways take turns, twice each; Redis's CPU (`INFO cpu`, user and system) is read before and
after each consumption, the filling excluded. Only the standard library is used: a small RESP
client below.
"""
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid

DELIVERED = """
local stream, group, base = KEYS[1], ARGV[1], KEYS[2]
local entry_id, post_id, comment_id, view
local function step()
  if redis.call('XACK', stream, group, entry_id) ~= 1 then return 'stale' end
  redis.call('HSETNX', base .. ':' .. post_id .. ':comments', comment_id, view)
  return 'applied'
end
local replies = {}
for a = 2, #ARGV, 5 do
  entry_id, post_id, comment_id, view = ARGV[a], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local _, reply = pcall(step)
  replies[#replies + 1] = reply
end
return replies
"""

IN_SCRIPT = """
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'NOACK',
  'STREAMS', KEYS[1], '>')
if not read then return 0 end
local base, n = KEYS[2], 0
for _, entry in ipairs(read[1][2]) do
  local fields, data = entry[2], nil
  for i = 1, #fields, 2 do
    if fields[i] == 'data' then data = fields[i + 1] end
  end
  pcall(function()
    local comment = cjson.decode(data)
    local view = cjson.encode({id = comment.id, content = comment.content, status = 'pending'})
    redis.call('HSETNX', base .. ':' .. comment.postId .. ':comments', comment.id, view)
  end)
  n = n + 1
end
return n
"""


class Resp:
    """Just enough of RESP 2 to send commands and read their replies."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            arg = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        self.sock.sendall(b"".join(out))

    def read(self):
        line = self.file.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            if int(rest) < 0:
                return None
            return self.file.read(int(rest) + 2)[:-2]
        if int(rest) < 0:
            return None
        return [self.read() for _ in range(int(rest))]

    def call(self, *args):
        self.send(*args)
        return self.read()


def redis_cpu(redis):
    info = redis.call("INFO", "cpu").decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def fill(redis, entries):
    redis.call("FLUSHALL", "SYNC")
    for start in range(0, entries, 1000):
        count = min(1000, entries - start)
        for n in range(start, start + count):
            data = json.dumps({
                "id": str(uuid.uuid4()),
                "postId": str(uuid.UUID(int=n % 100)),
                "content": f"a comment of some length, about sixty characters long. {n}",
                "status": "pending",
            })
            redis.send("XADD", "stream", "*", "type", "CommentCreated", "version", "1",
                       "request_id", str(uuid.uuid4()), "producer", "comments", "data", data)
        for _ in range(count):
            redis.read()
    redis.call("XGROUP", "CREATE", "stream", "query", "0")


def delivered(redis, sha, entries, batch):
    done = 0
    while done < entries:
        reply = redis.call("XREADGROUP", "GROUP", "query", "c", "COUNT", batch,
                           "STREAMS", "stream", ">")
        args = ["query"]
        for entry_id, fields in reply[0][1]:
            fields = dict(zip(fields[::2], fields[1::2]))
            comment = json.loads(fields[b"data"])
            view = json.dumps({"id": comment["id"], "content": comment["content"],
                               "status": "pending"})
            args += [entry_id, fields[b"request_id"], comment["postId"], comment["id"], view]
        redis.call("EVALSHA", sha, 2, "stream", "view", *args)
        done += len(reply[0][1])


def in_script(redis, sha, entries, batch):
    done = 0
    while done < entries:
        done += redis.call("EVALSHA", sha, 2, "stream", "view", "query", "c", batch)


def main():
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    batches = [int(b) for b in sys.argv[2:]] or [100, 10, 1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tempfile.mkdtemp()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis = Resp(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        ways = {
            "delivered": (delivered, redis.call("SCRIPT", "LOAD", DELIVERED)),
            "in-script": (in_script, redis.call("SCRIPT", "LOAD", IN_SCRIPT)),
        }
        for batch in batches:
            for _ in range(2):
                for name, (consume, sha) in ways.items():
                    fill(redis, entries)
                    before = redis_cpu(redis)
                    consume(redis, sha, entries, batch)
                    spent = redis_cpu(redis) - before
                    print(f"batch {batch:4}  {name:10}  Redis CPU {spent * 1e6 / entries:6.2f} us per entry")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
