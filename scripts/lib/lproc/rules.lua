-- lproc.rules: the cleaning rules that scripts/clean.lua declares, over the C engine lproc.logfmt.
--
--   local rules = require "lproc.rules"
--   local R = rules.new{ geoip = {"build/country.mmdb"}, max_line = 65536 }
--   R:format "combined"                                   -- a preset: combined, common, proxy
--   R:format("mysite", [[$remote_addr - $remote_user [$time_local] "$request" $status ...]])
--   R:column("cache_status", "VARCHAR(16)")               -- a custom column (after the standard ones)
--   table.insert(R.user_agents.browser, 1, {"MyApp/", "MyApp"})
--   function R.map(rec) rec.cache_status = rec.upstream_cache_status end
--
-- What the runtime uses:
--   R:compile()          -> R      builds the engine; raises "rules: ..." on a bad declaration
--   R:columns()          -> {{name=, type=, null=, index=, custom=}...}  id first, custom last
--   R:process(line, id)  -> true, v1, ..., vN | false, reason   (nil = NULL; DECIMAL as text)
--   R:json(line, id)     -> the same result as one JSON object (no newline)
--   R:json(line, id, f)  -> writes that object and a newline to the file f: true | nil, err
--   R:stats()            -> {lines=, rows=, rejects=, map_errors=, ua_cache_hits=, ...}
--
-- Formats use nginx log_format syntax and are tried in the order declared; a line that matches
-- none is a reject. Every standard column of clean_log is computed in C from the variables it
-- knows ($remote_addr, $remote_user, $time_local, $time_iso8601, $msec, $request,
-- $request_method, $request_uri, $server_protocol, $status, $body_bytes_sent, $bytes_sent,
-- $request_time, $http_referer, $http_user_agent, $host, $server_name, $http_host,
-- $proxy_session). Any other variable is captured as text and readable in the mapping function.
--
-- The mapping function R.map(rec) (optional) runs once per matched line, after the standard
-- columns are filled:
--   rec.<column>            the column's value (DECIMAL columns read as numbers)
--   rec.<variable>          a variable of the matched format, as logged (nil when absent or "-")
--   rec._format, rec._line  the name of the matched format, the line
--   rec.<column> = v        sets a column (converted to its SQL type; a bad value raises)
--   return false, "reason"  (or nil, "reason") makes the line a reject with that reason
-- A column wins over a variable of the same name; a custom column named like a variable is
-- filled from it before the mapping function runs. Writing a standard column does not
-- recompute the columns derived from it. An error in the mapping function makes the line a
-- reject "map error: script:line: message", and the run goes on.
--
-- What the standard columns hold (all computed in C, see src/lua_logfmt.c):
--   * timestamp, year, month, day, day_of_week, time: UTC, from the offset logged in
--     $time_local / $time_iso8601 (or $msec). An impossible date (30/Feb, month "Foo", 24:00:00,
--     offset +0099) or one outside 1000..9999 is a reject.
--   * "-" (or nothing) is NULL for session, user, referrer, user_agent, vhost; sizes "-" are 0.
--   * url is the request target as logged (nginx escapes such as \x22 stay as text); a request
--     that is not "METHOD TARGET PROTOCOL" (e.g. "-", TLS handshake bytes) keeps url = the
--     request and NULL rest_method / protocol / URL parts. host is lower-case, without port,
--     brackets or user info; a port outside 0..65535 makes host and port NULL. The fragment
--     (#...) is in no part. Percent-escapes are kept.
--   * status_verbose: the IANA reason phrase (RFC 9110 names), plus nginx's own 444, 494, 495,
--     496, 497 and 499 ("Client Closed Request"); NULL for other codes (418, 906...).
--   * size_kilo_bytes / size_mega_bytes are exact DECIMALs (bytes / 1024, bytes / 1048576);
--     sizes above 2^63 - 1 are rejects. request_time is DECIMAL(12,3), rounded half up.
--   * Text is valid UTF-8: each invalid sequence (maximal subpart) and each control character
--     (C0, DEL, C1: tab and ESC included) becomes U+FFFD; values longer than their column are
--     cut at a character boundary. The raw line stays intact in raw_log / clean_log_reject.
--   * GeoIP: the country (code and name together) from the first database that knows the
--     address's country, the city from the first that knows its city; answers are cached.
--   * A trailing "\r" or "\n" is ignored; lines over max_line (default 65536 bytes, at most
--     16 MiB) are rejects "line too long (N bytes, max M)" without being parsed.
local logfmt = require "lproc.logfmt"

local M = {}

-- nginx's predefined formats, and the original project's proxy log
-- (IP SESSION USER [time] "request" status size -, SESSION 15 characters or -).
M.presets = {
    combined = [[$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"]],
    common = [[$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent]],
    proxy = [[$remote_addr $proxy_session $remote_user [$time_local] "$request" $status $body_bytes_sent -]],
}

-- The user-agent rules: for each of browser, os and device, a list of {pattern, name} tried in
-- order; the first pattern found in the user agent gives the column its name. A pattern with
-- no regex metacharacter is a plain substring; others are PCRE2 (add (?i) for any case).
-- device falls back to default_device when no rule matches (NULL without a user agent).
-- Each rules object gets its own copy: extend it with
--     table.insert(R.user_agents.browser, 1, {"MyApp/", "MyApp"})   -- 1: before the others
M.user_agents = {
    browser = {
        {"Googlebot", "Googlebot"},
        {"bingbot", "Bingbot"},
        {"YandexBot", "YandexBot"},
        {"Baiduspider", "Baiduspider"},
        {"DuckDuckBot", "DuckDuckBot"},
        {"Applebot", "Applebot"},
        {"AhrefsBot", "AhrefsBot"},
        {"SemrushBot", "SemrushBot"},
        {"facebookexternalhit", "Facebook"},
        {"Twitterbot", "Twitterbot"},
        {"^curl/", "curl"},
        {"^Wget/", "Wget"},
        {"python-requests/", "Python Requests"},
        {"Go-http-client/", "Go HTTP client"},
        {"Edg(e|A|iOS)?/", "Edge"},
        {"OPR/|Opera", "Opera"},
        {"SamsungBrowser/", "Samsung Internet"},
        {"YaBrowser/", "Yandex Browser"},
        {"Vivaldi/", "Vivaldi"},
        {"Firefox/|FxiOS/", "Firefox"},
        {"CriOS/", "Chrome"},
        {"Chromium/", "Chromium"},
        {"Chrome/", "Chrome"},
        {"MSIE |Trident/", "Internet Explorer"},
        {"Safari/", "Safari"},
    },
    os = {
        {"Windows Phone", "Windows Phone"},
        {"Windows", "Windows"},
        {"iPhone|iPad|iPod", "iOS"},
        {"Android", "Android"},
        {"CrOS", "Chrome OS"},
        {"Macintosh|Mac OS X", "macOS"},
        {"Linux", "Linux"},
        {"FreeBSD", "FreeBSD"},
    },
    device = {
        {"(?i)bot\\b|crawler|spider|slurp|facebookexternalhit|^curl/|^wget/|python-requests|go-http-client",
         "bot"},
        {"iPad|Tablet|Android(?!.*Mobile)", "tablet"},
        {"Mobi|iPhone|iPod|Windows Phone", "mobile"},
    },
    default_device = "desktop",
}

-- The columns that get an index in clean_log.
local INDEXED = { timestamp = true, ip = true, host = true, status = true }

local function deepcopy(t)
    if type(t) ~= "table" then return t end
    local c = {}
    for k, v in pairs(t) do c[k] = deepcopy(v) end
    return c
end

local Rules = {}
Rules.__index = Rules

-- rules.new{ geoip = {path or lproc.geoip db...}, max_line = 65536, ua_cache = 4096 } -> R
-- geoip: databases tried in order, the first answer wins per field (nil: the runtime's
-- default, LPROC_GEOIP_DB or the built-in country database).
function M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then error("rules.new: expected a table of options", 2) end
    return setmetatable({
        geoip = opts.geoip,
        max_line = opts.max_line,
        ua_cache = opts.ua_cache,
        geo_cache = opts.geo_cache,
        user_agents = deepcopy(M.user_agents),
        map = nil,
        _formats = {},
        _columns = {},
    }, Rules)
end

-- R:format(name [, text]): declares a format (text in nginx log_format syntax; without text,
-- the preset called name). Compiled at once, so that a mistake points at the declaration.
function Rules:format(name, text)
    if type(name) ~= "string" then error("rules: R:format(name [, text]): name must be a string", 2) end
    if text == nil then
        text = M.presets[name]
        if text == nil then
            error(string.format("rules: unknown preset '%s' (combined, common, proxy)", name), 2)
        end
    elseif type(text) ~= "string" then
        error(string.format("rules: format '%s': text must be a string", name), 2)
    end
    for _, f in ipairs(self._formats) do
        if f.name == name then error(string.format("rules: format '%s' declared twice", name), 2) end
    end
    local ok, compiled = pcall(logfmt.compile, text)
    if not ok then
        error(string.format("rules: format '%s': %s", name, (compiled:gsub("^logfmt%.compile: ", ""))), 2)
    end
    compiled:close()
    self._formats[#self._formats + 1] = { name = name, format = text }
    return self
end

-- R:column(name, sqltype [, {index = true}]): adds a custom column after the standard ones.
-- Types: VARCHAR(n), CHAR(n), TEXT, MEDIUMTEXT, TINYINT..BIGINT [UNSIGNED], BOOLEAN,
-- DECIMAL(p,s), DOUBLE, DATETIME, DATE, TIME. Values are converted and checked on write.
function Rules:column(name, sqltype, opts)
    if type(name) ~= "string" or type(sqltype) ~= "string" then
        error("rules: R:column(name, sqltype): name and sqltype must be strings", 2)
    end
    for _, c in ipairs(logfmt.columns()) do
        if c.name == name then error(string.format("rules: column '%s' is a standard column", name), 2) end
    end
    for _, c in ipairs(self._columns) do
        if c.name == name then error(string.format("rules: column '%s' declared twice", name), 2) end
    end
    self._columns[#self._columns + 1] = { name = name, type = sqltype, index = opts and opts.index or nil }
    return self
end

-- R:compile() -> R: opens the GeoIP databases and builds the engine. Raises "rules: ...".
function Rules:compile()
    if #self._formats == 0 then error("rules: no format declared (e.g. R:format \"combined\")", 2) end
    if self.map ~= nil and type(self.map) ~= "function" then error("rules: R.map must be a function", 2) end
    local dbs = {}
    for i, g in ipairs(self.geoip or {}) do
        if type(g) == "string" then
            local db, err = require("lproc.geoip").open(g)
            if not db then error("rules: " .. err, 2) end
            dbs[i] = db
        else
            dbs[i] = g
        end
    end
    local ok, engine = pcall(logfmt.engine, {
        formats = self._formats,
        columns = self._columns,
        geoip = dbs,
        ua = self.user_agents,
        map = self.map,
        max_line = self.max_line,
        ua_cache = self.ua_cache,
        geo_cache = self.geo_cache,
    })
    if not ok then error("rules: " .. tostring(engine):gsub("^logfmt%.engine: ", ""), 2) end
    if self._engine then self._engine:close() end
    self._engine = engine
    self._dbs = dbs
    -- Called as R:process(line, id) / R:json(line, id), straight into C.
    self.process = engine:bind("process")
    self.json = engine:bind("json")
    return self
end

-- R:columns() -> {{name=, type=, null=, index=, custom=}...}: clean_log's columns in order.
function Rules:columns()
    local cols = logfmt.columns()
    for _, c in ipairs(cols) do
        c.custom = false
        c.index = INDEXED[c.name] or false
    end
    for _, c in ipairs(self._columns) do
        cols[#cols + 1] = { name = c.name, type = c.type, null = true, custom = true, index = c.index or false }
    end
    return cols
end

function Rules:process()
    error("rules: R:process before R:compile()", 2)
end

function Rules:json()
    error("rules: R:json before R:compile()", 2)
end

-- R:stats() -> the engine's counters.
function Rules:stats()
    if not self._engine then error("rules: R:stats before R:compile()", 2) end
    return self._engine:stats()
end

return M
