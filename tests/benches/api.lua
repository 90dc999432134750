-- wrk script for benches/api.rs: each request reads a random user's top songs.
-- Env: BENCH_USER_FIRST and BENCH_USERS (ids are u<first> .. u<first+users-1>), BENCH_METHOD,
-- BENCH_PATH and BENCH_BODY
-- (templates in which __USER__ is replaced), BENCH_AUTHORIZATION (optional header value).
-- Prints one line "wrk-result ..." that the benchmark parses.
local first_user = tonumber(os.getenv("BENCH_USER_FIRST") or "0")
local users = tonumber(os.getenv("BENCH_USERS"))
local method = os.getenv("BENCH_METHOD")
local path = os.getenv("BENCH_PATH")
local body = os.getenv("BENCH_BODY")
local authorization = os.getenv("BENCH_AUTHORIZATION")
local threads = {}

function setup(thread)
  thread:set("seed", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + seed)
  ok_responses = 0
  unavailable_responses = 0
  other_responses = 0
  if authorization ~= nil and authorization ~= "" then
    wrk.headers["Authorization"] = authorization
  end
end

function request()
  local user = "u" .. math.random(first_user, first_user + users - 1)
  local request_path = path:gsub("__USER__", user)
  if body ~= nil and body ~= "" then
    local request_body = body:gsub("__USER__", user)
    return wrk.format(method, request_path, nil, request_body)
  end
  return wrk.format(method, request_path)
end

function response(status, headers, response_body)
  if status == 200 then
    ok_responses = ok_responses + 1
  elseif status == 503 then
    unavailable_responses = unavailable_responses + 1
  else
    other_responses = other_responses + 1
  end
end

function done(summary, latency, requests)
  local ok, unavailable, other = 0, 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("ok_responses")
    unavailable = unavailable + thread:get("unavailable_responses")
    other = other + thread:get("other_responses")
  end
  io.write(string.format(
    "wrk-result requests=%d duration_us=%d p50_us=%d p99_us=%d ok=%d unavailable=%d other=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    ok, unavailable, other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
