-- testing.lua: the small test framework of lproc's Lua tests.
--
--   local T = require "testing"
--   T.test("name", function() T.eq(got, want) end)
--   T.done()      -- prints "N passed, N failed" and exits non-zero on a failure
--
-- A test fails when an assertion fails or it raises. Values are compared deeply;
-- strings are shown escaped so that binary data stays readable.
local T = {}

local passed, failed = 0, 0
local only = os.getenv("LPROC_TEST_ONLY")

local function show(v)
    if type(v) == "string" then
        if #v > 200 then
            return string.format("%q... (%d bytes)", v:sub(1, 200), #v)
        end
        return (string.format("%q", v):gsub("\n", "n"))
    elseif type(v) == "table" then
        local keys = {}
        for k in pairs(v) do keys[#keys + 1] = k end
        table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
        local parts = {}
        for _, k in ipairs(keys) do parts[#parts + 1] = "[" .. show(k) .. "]=" .. show(v[k]) end
        return "{" .. table.concat(parts, ", ") .. "}"
    end
    return tostring(v)
end
T.show = show

local function deq(a, b)
    if a == b then return true end
    if type(a) ~= "table" or type(b) ~= "table" then
        return type(a) == "number" and type(b) == "number" and a ~= a and b ~= b
    end
    for k, v in pairs(a) do if not deq(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
end
T.deq = deq

-- Raises a test failure located at the line that called the assertion.
local function fail(msg)
    local info = debug.getinfo(3, "Sl")
    error({ test_failure = info.short_src .. ":" .. info.currentline .. ": " .. msg })
end

-- T.eq(got, want [, what]): deep equality.
function T.eq(got, want, what)
    if not deq(got, want) then
        fail(string.format("%s: got %s, want %s", what or "value", show(got), show(want)))
    end
end

-- T.ok(v [, what]): v is truthy.
function T.ok(v, what)
    if not v then fail((what or "expected a true value") .. ": got " .. show(v), 1) end
    return v
end

-- T.err(fn, want): fn() raises an error whose message equals want (string), or
-- matches want.pattern ({pattern = "..."}). A leading "chunk:line: " position, which
-- Lua adds to errors raised from C, is ignored when want has none.
function T.err(fn, want)
    local ok, e = pcall(fn)
    if ok then fail("expected an error " .. show(want), 1) end
    e = tostring(type(e) == "table" and e.test_failure or e)
    if type(want) == "table" then
        if not e:find(want.pattern) then fail("error " .. show(e) .. " does not match " .. show(want.pattern), 1) end
    elseif want ~= nil and e ~= want and e:gsub("^[^:\n]+:%d+: ", "", 1) ~= want then
        fail("error " .. show(e) .. ", want " .. show(want))
    end
    return e
end

-- T.env(name): a variable the test runner must have set (server URLs and such).
function T.env(name)
    local v = os.getenv(name)
    if v == nil or v == "" then error(name .. " is not set: run the tests with tests/run.sh", 2) end
    return v
end

-- T.test(name, fn): runs fn and records the outcome.
function T.test(name, fn)
    if only and not name:find(only, 1, true) then return end
    local ok, e = xpcall(fn, function(err)
        if type(err) == "table" and err.test_failure then
            return err.test_failure
        end
        return debug.traceback(tostring(err), 2)
    end)
    if ok then
        passed = passed + 1
        io.stdout:write("  ok   ", name, "\n")
    else
        failed = failed + 1
        io.stdout:write("  FAIL ", name, "\n       ", (tostring(e):gsub("\n", "\n       ")), "\n")
    end
    io.stdout:flush()
end

-- T.done(): prints the summary line and exits (status 1 if anything failed).
function T.done()
    io.stdout:write(string.format("%d passed, %d failed\n", passed, failed))
    io.stdout:flush()
    os.exit(failed == 0 and 0 or 1, true)
end

return T
