-- POSTs one form body per request, read from a file (one body a line), with what the harness passes in the
-- environment (services/bench/wrk.py):
--   BENCH_BODIES    the file of bodies; thread i of BENCH_THREADS takes lines i, i + n, ...
--   BENCH_ONCE      "1": each body is sent once and a thread stops when its share runs out (login codes);
--                   else the share is sent in turn, over and over
--   BENCH_AUTH      an Authorization header value, or empty
--   BENCH_EXPECT    a 2xx answer must contain this, or it counts as unexpected
--   BENCH_ALSO      an answer containing this is counted apart rather than as unexpected (an inactive token)
--   BENCH_REPORT    where done() writes its figures as JSON
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local n = tonumber(os.getenv("BENCH_THREADS"))
  bodies, next_body, sent = {}, 1, 0
  unexpected, also, dry = 0, 0, 0
  once = os.getenv("BENCH_ONCE") == "1"
  expect = os.getenv("BENCH_EXPECT")
  also_text = os.getenv("BENCH_ALSO") or ""
  local line_no = 0
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    if line_no % n == id then
      table.insert(bodies, line)
    end
    line_no = line_no + 1
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  local auth = os.getenv("BENCH_AUTH") or ""
  if auth ~= "" then
    wrk.headers["Authorization"] = auth
  end
end

function request()
  if next_body > #bodies then
    if once then
      dry = 1
      wrk.thread:stop()
    end
    next_body = 1
  end
  local body = bodies[next_body]
  next_body = next_body + 1
  sent = sent + 1
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status < 300 and not string.find(body, expect, 1, true) then
    if also_text ~= "" and string.find(body, also_text, 1, true) then
      also = also + 1
    else
      unexpected = unexpected + 1
    end
  end
end

function done(summary, latency, requests)
  local unexpected_total, also_total, sent_total, dry_threads = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    unexpected_total = unexpected_total + thread:get("unexpected")
    also_total = also_total + thread:get("also")
    sent_total = sent_total + thread:get("sent")
    dry_threads = dry_threads + thread:get("dry")
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_REPORT"), "w"))
  out:write(string.format(
    '{"requests":%d,"durationUs":%d,"bytes":%d,"sent":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"unexpected":%d},"also":%d,' ..
    '"dryThreads":%d,"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, sent_total,
    e.connect, e.read, e.write, e.status, e.timeout, unexpected_total, also_total, dry_threads,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  out:close()
end
