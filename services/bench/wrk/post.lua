-- POSTs one form body per request, read from a file (one body a line), with what the harness passes in the
-- environment (services/bench/wrk.py):
--   BENCH_BODIES    the file of bodies
--   BENCH_ONCE      "1": each body is sent once, thread i of BENCH_THREADS taking lines i, i + n, ..., and a
--                   thread stops when its share runs out (login codes: the harness sizes the pool so that it
--                   does not, and records "dryThreads" when it did); else every thread cycles through every body
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
  statuses = {}
  once = os.getenv("BENCH_ONCE") == "1"
  expect = os.getenv("BENCH_EXPECT")
  also_text = os.getenv("BENCH_ALSO") or ""
  local line_no = 0
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    if not once or line_no % n == id then
      table.insert(bodies, line)
    end
    line_no = line_no + 1
  end
  if not once then
    -- Every thread cycles through every body, each from its own starting point.
    next_body = 1 + math.floor(id * #bodies / n)
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
      -- wrk wants a request all the same; the thread stops before it is answered, and a spent code is never
      -- sent twice.
      dry = 1
      wrk.thread:stop()
      return wrk.format("GET", "/healthz")
    end
    next_body = 1
  end
  local body = bodies[next_body]
  next_body = next_body + 1
  sent = sent + 1
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status >= 400 then
    statuses[status] = (statuses[status] or 0) + 1
  end
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
  local sent_by_thread, statuses_total = {}, {}
  for _, thread in ipairs(threads) do
    table.insert(sent_by_thread, thread:get("sent"))
    for status, count in pairs(thread:get("statuses")) do
      statuses_total[status] = (statuses_total[status] or 0) + count
    end
    unexpected_total = unexpected_total + thread:get("unexpected")
    also_total = also_total + thread:get("also")
    sent_total = sent_total + thread:get("sent")
    dry_threads = dry_threads + thread:get("dry")
  end
  local e = summary.errors
  local by_status = {}
  for status, count in pairs(statuses_total) do
    table.insert(by_status, string.format('"%d":%d', status, count))
  end
  local out = assert(io.open(os.getenv("BENCH_REPORT"), "w"))
  out:write(string.format(
    '{"requests":%d,"durationUs":%d,"bytes":%d,"sent":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"unexpected":%d,"statuses":{%s}},' ..
    '"also":%d,' ..
    '"dryThreads":%d,"sentByThread":[%s],"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, sent_total,
    e.connect, e.read, e.write, e.status, e.timeout, unexpected_total, table.concat(by_status, ","),
    also_total, dry_threads,
    table.concat(sent_by_thread, ","),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  out:close()
end
