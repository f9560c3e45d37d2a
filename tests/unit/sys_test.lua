-- lproc.sys: clocks, signals as flags, stat, atomic writes.
local T = require "testing"
local sys = require "lproc.sys"
local tmp = T.env("LPROC_TEST_TMP")

T.test("clocks and sleep", function()
    local t0 = sys.now()
    sys.sleep(0.05)
    local dt = sys.now() - t0
    T.ok(dt >= 0.05 and dt < 5, "slept " .. dt)
    T.ok(math.abs(sys.time() - os.time()) < 2, "realtime")
end)

T.test("signals become flags", function()
    sys.signals("HUP", "USR1")
    T.eq(sys.signal(), nil)
    assert(sys.kill(sys.getpid(), "HUP"))
    T.eq(sys.signal(), "HUP")
    T.eq(sys.signal(), nil)
    T.err(function() sys.signals("NOPE") end, "bad argument #1 to 'signals' (unknown signal 'NOPE')")
end)

T.test("write_atomic and stat", function()
    local p = tmp .. "/atomic.txt"
    T.eq(sys.write_atomic(p, "a\0b"), true)
    local f = assert(io.open(p, "rb")); T.eq(f:read("a"), "a\0b"); f:close()
    local st = sys.stat(p)
    T.eq(st.size, 3)
    T.eq(st.mode, 420) -- 0644
    local r, err = sys.stat(tmp .. "/nope")
    T.eq({ r, err }, { nil, "sys.stat: " .. tmp .. "/nope: No such file or directory" })
    T.ok(sys.rss() > 0)
end)

T.done()
