-- lproc.util: small helpers shared by the producer and the consumers: command-line options,
-- terminal-safe messages, the line id, exponential backoff.
local sha256 = require "lproc.sha256"
local sys = require "lproc.sys"

local M = {}

local tostring, type = tostring, type

-- M.lineid(source, offset, line) -> the line's id: lower-case hex SHA-256 of
-- "source NUL offset NUL line" (offset, an integer, in decimal).
M.lineid = sha256.lineid

-- The SQL type of the id column of every table (raw_log.id = clean_log.id): hex, compared
-- as bytes.
M.ID_SQL_TYPE = "CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"

-- M.safe(s) -> s with control characters, DEL and bytes of invalid UTF-8 shown as \xNN,
-- so that text from a log line can never drive the terminal.
function M.safe(s)
    s = tostring(s)
    if not s:find("[%c\127-\255]") then return s end
    local out, i, n = {}, 1, #s
    while i <= n do
        local c = s:byte(i)
        local len = c < 0x80 and 1 or c >= 0xC2 and c <= 0xDF and 2 or c >= 0xE0 and c <= 0xEF and 3
            or c >= 0xF0 and c <= 0xF4 and 4 or 0
        local ok = len > 0 and i + len - 1 <= n and utf8.len(s, i, i + len - 1) == 1
        if ok and (len > 1 or (c >= 32 and c ~= 127)) then
            out[#out + 1] = s:sub(i, i + len - 1)
            i = i + len
        else
            out[#out + 1] = c == 10 and "\\n" or c == 9 and "\\t" or string.format("\\x%02X", c)
            i = i + 1
        end
    end
    return table.concat(out)
end

-- M.logger(name) -> log(fmt, ...): writes "name: message" on stderr, terminal-safe.
function M.logger(name)
    return function(fmt, ...)
        io.stderr:write(name, ": ", M.safe(string.format(fmt, ...)), "\n")
        io.stderr:flush()
    end
end

-- M.die(name, fmt, ...): one clear line on stderr and exit status 1.
function M.die(name, fmt, ...)
    io.stderr:write(name, ": ", M.safe(string.format(fmt, ...)), "\n")
    io.stderr:flush()
    os.exit(1)
end

-- M.getopt(args, spec, name) -> opts, positional
-- spec: { ["--follow"] = "flag", ["--batch"] = "count", ["--source"] = "string", ... }:
-- "number" is any non-negative number, "count" a whole number >= 1.
-- "--opt=value" and "--opt value" are accepted; "--" ends options. An unknown option or a
-- missing/invalid value is one clear line on stderr and exit status 2.
function M.getopt(args, spec, name)
    local opts, pos, i = {}, {}, 1
    local function bad(fmt, ...)
        io.stderr:write(name, ": ", M.safe(string.format(fmt, ...)), " (try --help)\n")
        os.exit(2)
    end
    while i <= #args do
        local a = args[i]
        if a == "--" then
            for j = i + 1, #args do pos[#pos + 1] = args[j] end
            break
        elseif a:sub(1, 2) == "--" then
            local key, val = a:match("^(%-%-[^=]+)=(.*)$")
            key = key or a
            local kind = spec[key]
            if kind == nil then bad("unknown option %s", key) end
            local field = key:sub(3):gsub("-", "_")
            if kind == "flag" then
                if val then bad("option %s takes no value", key) end
                opts[field] = true
            else
                if not val then
                    i = i + 1
                    val = args[i]
                    if val == nil then bad("option %s needs a value", key) end
                end
                if kind == "number" then
                    local v = tonumber(val)
                    if not v or v < 0 then bad("option %s needs a non-negative number, got '%s'", key, val) end
                    opts[field] = v
                elseif kind == "count" then
                    local v = math.tointeger(tonumber(val))
                    if not v or v < 1 then bad("option %s needs a whole number >= 1, got '%s'", key, val) end
                    opts[field] = v
                else
                    opts[field] = val
                end
            end
        else
            pos[#pos + 1] = a
        end
        i = i + 1
    end
    return opts, pos
end

-- M.backoff(first, max) -> next(): the delays 0.1 s, 0.2, 0.4, ... up to max (with jitter);
-- next.reset() starts again.
function M.backoff(first, max)
    local delay = first or 0.1
    local b = {}
    function b.next()
        local d = delay * (0.75 + 0.5 * math.random())
        delay = math.min(delay * 2, max or 5)
        return d
    end
    function b.reset() delay = first or 0.1 end
    return b
end

local function is_stop(sig) return sig == "TERM" or sig == "INT" end

-- M.stopping(pending) -> the first TERM or INT in the list of pending signals, or nil.
function M.stopping(pending)
    for _, s in ipairs(pending) do
        if is_stop(s) then return s end
    end
end

-- M.sleep_unless_signal(seconds, pending): sleeps in small steps, returning early when a TERM
-- or INT arrives or is pending (returns its name). Every signal that arrives is appended to
-- pending for the caller; another one (HUP: reload) does not cut the sleep short.
function M.sleep_unless_signal(seconds, pending)
    local t_end = sys.now() + seconds
    local stop = M.stopping(pending)
    while not stop and sys.now() < t_end do
        local s = sys.signal()
        if s then
            pending[#pending + 1] = s
            if is_stop(s) then stop = s end
        else
            sys.sleep(math.min(0.1, t_end - sys.now()))
        end
    end
    return stop
end

-- M.rate(n, seconds) -> "12.3k/s"-style text.
function M.rate(n, seconds)
    local r = seconds > 0 and n / seconds or 0
    if r >= 1e6 then return string.format("%.2fM/s", r / 1e6) end
    if r >= 1e4 then return string.format("%.1fk/s", r / 1e3) end
    return string.format("%.0f/s", r)
end

return M
