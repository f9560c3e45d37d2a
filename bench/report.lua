-- bench/report.lua: the table of bench/run.sh, from its raw figures.
--
--   lproc bench/report.lua RESULTS.tsv META.tsv CALLGRIND_TOP [OUTPUT.md]
--
-- RESULTS.tsv: "KEY <tab> RUN <tab> VALUE" lines; META.tsv: "KEY <tab> TEXT" lines;
-- CALLGRIND_TOP: the first lines of callgrind_annotate's function list. Prints the report
-- (Markdown) on stdout and, when OUTPUT.md is given, writes it there too. Every figure is the
-- median of the runs with the range (min-max); a ratio is taken within each run, then its
-- median is reported.
local results_path, meta_path, top_path, out_path = arg[1], arg[2], arg[3], arg[4]
if not (results_path and meta_path and top_path) then
    io.stderr:write("usage: lproc bench/report.lua RESULTS.tsv META.tsv CALLGRIND_TOP [OUTPUT.md]\n")
    os.exit(2)
end

local runs, meta = {}, {}       -- runs[key][run] = number; meta[key] = text
for line in io.lines(results_path) do
    local key, run, value = line:match("^([^\t]+)\t(%d+)\t(.*)$")
    local v = tonumber(value)
    if not (key and v) then error("bad line in " .. results_path .. ": " .. line) end
    runs[key] = runs[key] or {}
    runs[key][tonumber(run)] = v
end
for line in io.lines(meta_path) do
    local key, text = line:match("^([^\t]+)\t(.*)$")
    if key then meta[key] = text end
end

local function values(key)
    local t = runs[key]
    if not t then error("no figure " .. key .. " in " .. results_path) end
    local list = {}
    for _, v in pairs(t) do list[#list + 1] = v end
    table.sort(list)
    return list
end

local function median(list)
    local n = #list
    if n % 2 == 1 then return list[(n + 1) // 2] end
    return (list[n // 2] + list[n // 2 + 1]) / 2
end

-- Per-run combination of figures: f(a[run], b[run], ...) for every run they all have.
local function per_run(f, ...)
    local keys, out = { ... }, {}
    for run in pairs(runs[keys[1]] or error("no figure " .. keys[1])) do
        local args = {}
        for i, k in ipairs(keys) do
            args[i] = (runs[k] or error("no figure " .. k))[run]
        end
        if #args == #keys then out[#out + 1] = f(table.unpack(args)) end
    end
    table.sort(out)
    return out
end

-- 1234567.8 -> "1,234,568"
local function int(x)
    local s = string.format("%.0f", x)
    local sign, digits = s:match("^(-?)(%d+)$")
    local lead = (#digits - 1) % 3 + 1
    return sign .. digits:sub(1, lead) .. digits:sub(lead + 1):gsub("(%d%d%d)", ",%1")
end
local function dec(digits) return function(x) return string.format("%." .. digits .. "f", x) end end
local function mb(kb) return string.format("%.1f", kb / 1024) end
local function pct(x) return string.format("%.0f%%", x * 100) end
local function times(x) return string.format("%.1f×", x) end

-- "median (min–max)" of a sorted list, each formatted by fmt; one run: the value alone.
local function spread(list, fmt)
    if #list == 1 then return fmt(list[1]) end
    return string.format("%s (%s–%s)", fmt(median(list)), fmt(list[1]), fmt(list[#list]))
end
local function fig(key, fmt) return spread(values(key), fmt) end

local sizes = {}
for w in (meta.sizes or ""):gmatch("%S+") do sizes[#sizes + 1] = tonumber(w) end
local N_CLEAN, N_PIPE, N_CG, BIG_BYTES, BATCH = table.unpack(sizes)
local BIG_LINES = tonumber(meta.big_lines)

local out = {}
local function w(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
local function verdict(ok) return ok and "met" or "**missed**" end

-- Figures ----------------------------------------------------------------------------------
local dry_rate = per_run(function(t) return N_CLEAN / t end, "dry.wall")
local goa_rate = per_run(function(t) return N_CLEAN / t end, "goa.wall")
local speed_ratio = per_run(function(a, b) return b / a end, "dry.wall", "goa.wall")
local cpu_ratio = per_run(function(a, b) return b / a end, "dry.cpu", "goa.cpu")
local e2e_ratio = per_run(function(a, b) return a / b end, "e2e.rate", "ceil.rate")
local e2e_lp_ratio = per_run(function(a, b) return a / b end, "e2e.rate", "ceil_lp.rate")
local batch_rate = values("e2e_batch.rate")
local batch2_rate = values("e2e_batch2.rate")
local big_rss = values("big.prod_rss")
local consumer_rss = {}
for _, k in ipairs({ "e2e.lake_rss", "e2e.clean_rss", "e2e_batch.lake_rss", "e2e_batch.clean_rss" }) do
    consumer_rss[k] = median(values(k))
end
local single_consumer_max = math.max(consumer_rss["e2e.lake_rss"], consumer_rss["e2e.clean_rss"])
local batch_consumer_max = math.max(consumer_rss["e2e_batch.lake_rss"], consumer_rss["e2e_batch.clean_rss"])

local dry_clean, dry_reject = (meta.dry_rows or ""):match("^(%d+) (%d+)$")

w("# lproc benchmark results")
w("")
w("%s · %s · %s", meta.date, meta.cpu, meta.os)
w("")
w("Versions: %s; %s; %s; %s; %s.", meta.lproc, meta.goaccess, meta.rabbitmq, meta.mariadb, meta.valgrind)
w("")
w("Mode: %s; each figure is the median of the runs with the range (min–max); ratios are taken",
    meta.mode)
w("within each run. Load average at start %s, at end %s (%s).", meta.load_start, meta.load_end,
    "the machine is shared: wall-clock figures are noisy, CPU seconds and instructions less so")
w("")
w("| # | measurement | lproc | reference | ratio | target | |")
w("|---|---|---|---|---|---|---|")
w("| 1 | clean rules, %s lines: lines/s (wall) | %s | GoAccess `--process-and-exit`: %s | %s | ≥ 5× | %s |",
    int(N_CLEAN), spread(dry_rate, int), spread(goa_rate, int), spread(speed_ratio, times),
    verdict(median(speed_ratio) >= 5))
w("| | CPU seconds | %s | %s | %s | | |", fig("dry.cpu", dec(2)), fig("goa.cpu", dec(2)),
    spread(cpu_ratio, times))
w("| | peak RSS, MB | %s | %s | | | |", fig("dry.rss", mb), fig("goa.rss", mb))
w("| 2 | broker ceiling, %s lines: lines/s through both queues | | bare C (bench/ceiling.c): %s | | | |",
    int(N_PIPE), fig("ceil.rate", int))
w("| | the same with lproc's message properties (message_id, timestamp, 2 headers) | | %s | | | |",
    fig("ceil_lp.rate", int))
w("| 3 | end to end, 1 message per line, %s lines: lines/s | %s | ceiling (2) | %s | ≥ 70%% | %s |",
    int(N_PIPE), fig("e2e.rate", int), spread(e2e_ratio, pct), verdict(median(e2e_ratio) >= 0.7))
w("| | against the ceiling with lproc's message properties (2, second row: the same messages) | | | %s | | |",
    spread(e2e_lp_ratio, pct))
w("| 4 | end to end, `--batch %d`, %s lines: lines/s | %s | | | ≥ 50,000 | %s |",
    BATCH, int(N_PIPE), spread(batch_rate, int), verdict(median(batch_rate) >= 50000))
w("| | the same with two clean consumers on queue-data-clean (README: Scaling out) | %s | | | ≥ 50,000 | %s |",
    spread(batch2_rate, int), verdict(median(batch2_rate) >= 50000))
w("| 5 | producer peak RSS, %s MB file (%s lines, `--batch %d`), MB | %s | | | < 16 | %s |",
    int(BIG_BYTES / 1048576), int(BIG_LINES), BATCH, spread(big_rss, mb), verdict(median(big_rss) < 16 * 1024))
local function opt_fig(key)
    return runs[key] and fig(key, mb) or "?"
end
w("| | the same once 1/8, 1/4, 1/2 of the file was read, MB | %s / %s / %s | | | | |",
    opt_fig("big.rss_8"), opt_fig("big.rss_4"), opt_fig("big.rss_2"))
w("| | producer peak RSS, %s lines, 1 message per line / `--batch %d`, MB | %s / %s | | | < 16 | %s |",
    int(N_PIPE), BATCH, fig("e2e.prod_rss", mb), fig("e2e_batch.prod_rss", mb),
    verdict(median(values("e2e.prod_rss")) < 16 * 1024 and median(values("e2e_batch.prod_rss")) < 16 * 1024))
w("| | consumers' peak RSS, default prefetch (2000), lake / clean, 1 line per message, MB | %s / %s | | | < 64 | %s |",
    fig("e2e.lake_rss", mb), fig("e2e.clean_rss", mb), verdict(single_consumer_max < 64 * 1024))
w("| | the same, %d lines per message (`--batch %d`), MB | %s / %s | | | < 64 | %s |",
    BATCH, BATCH, fig("e2e_batch.lake_rss", mb), fig("e2e_batch.clean_rss", mb),
    verdict(batch_consumer_max < 64 * 1024))
w("| 6 | instructions per line, dry-run, %s lines (callgrind) | %s | | | | |",
    int(N_CG), fig("cg.per_line", int))
w("")

-- Where the time goes --------------------------------------------------------------------
w("## Where the CPU goes in the pipeline runs (CPU seconds for %s lines, median)", int(N_PIPE))
w("")
w("| run | wall s | producer | lake | clean | RabbitMQ | MariaDB | peak messages waiting, lake / clean |")
w("|---|---|---|---|---|---|---|---|")
local function wall_of(key)
    return median(per_run(function(r) return N_PIPE / r end, key .. ".rate"))
end
local function cpu_row(name, key)
    w("| %s | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %s / %s |", name, wall_of(key),
        median(values(key .. ".prod_cpu")), median(values(key .. ".lake_cpu")),
        median(values(key .. ".clean_cpu")), median(values(key .. ".beam_cpu")),
        median(values(key .. ".mdb_cpu")), int(median(values(key .. ".lake_backlog"))),
        int(median(values(key .. ".clean_backlog"))))
end
w("| ceiling: bare C publisher and consumers | %.1f | | | | %.2f | | |", wall_of("ceil"),
    median(values("ceil.beam_cpu")))
w("| the same with lproc's message properties | %.1f | | | | %.2f | | |", wall_of("ceil_lp"),
    median(values("ceil_lp.beam_cpu")))
w("| the same, all published first, then drained (once) | %.1f + %.1f | | | | %.2f + %.2f | | %s / %s |",
    median(values("backlog.pub_wall")), median(values("backlog.drain_wall")),
    median(values("backlog.pub_cpu")), median(values("backlog.drain_cpu")), int(N_PIPE), int(N_PIPE))
cpu_row("end to end, 1 message per line", "e2e")
cpu_row(string.format("end to end, `--batch %d`", BATCH), "e2e_batch")
cpu_row(string.format("end to end, `--batch %d`, two clean consumers (clean: both)", BATCH), "e2e_batch2")
w("")
local backlog_cpu = median(values("backlog.pub_cpu")) + median(values("backlog.drain_cpu"))
w("RabbitMQ runs with its own defaults (its schedulers do not busy-wait: +sbwt none). Messages")
w("that wait in a queue cost the broker %.1f× the CPU of messages whose consumers keep up (row 3", backlog_cpu / median(values("ceil_lp.beam_cpu")))
w("against row 2, same messages).")
w("")
w("Producer alone (publish + confirms, consumers running): %s lines/s one per message, %s lines/s",
    fig("e2e.prod_rate", int), fig("e2e_batch.prod_rate", int))
w("with `--batch %d` (%s lines/s on the big file); bare C publisher: %s msg/s.", BATCH,
    fig("big.prod_rate", int), fig("ceil.pub_rate", int))
w("")

-- What each one made of the file -----------------------------------------------------------
w("## Same input, same answers")
w("")
w("- Dry-run of the %s-line log: %s clean rows, %s rejects. GoAccess on the same file: %s",
    int(N_CLEAN), dry_clean and int(tonumber(dry_clean)) or "?", dry_reject and int(tonumber(dry_reject)) or "?",
    string.format("%s requests, %s valid, %s failed (it skips empty lines and accepts lines cut short",
        int(tonumber(meta.goa_total_requests)), int(tonumber(meta.goa_valid_requests)),
        int(tonumber(meta.goa_failed_requests))))
w("  after the status field, which lproc rejects).")
w("- GoAccess with its JSON report (one run): %s s wall, %s s CPU, %s MB peak RSS.",
    fig("goa_report.wall", dec(2)), fig("goa_report.cpu", dec(2)), fig("goa_report.rss", mb))
local rows1, rowsb = meta["e2e.rows"], meta["e2e_batch.rows"]
w("- Every pipeline run was checked: %s rows in raw_log, and each line's id in exactly one of",
    int(N_PIPE))
w("  clean_log / clean_log_reject (last runs: %s and %s clean + rejects).",
    (rows1 or "?"):gsub(" ", " + "), (rowsb or "?"):gsub(" ", " + "))
w("- Instructions per line exclude start-up (%s instructions for an empty file).",
    int(median(values("cg.base"))))
w("")
w("## Dry-run profile (callgrind, instructions, top functions)")
w("")
w("```")
for line in io.lines(top_path) do w("%s", line) end
w("```")
w("")
w("`??? [libcrypto.so.3]` is SHA-256's block function (the line id): valgrind does not offer the")
w("CPU's SHA instructions, so OpenSSL runs its generic code there; natively SHA-256 is about 6%%")
w("of the dry-run's time (perf). `??? [???]` is code generated by PCRE2's JIT (the format and")
w("user-agent regexes).")

local text = table.concat(out, "\n") .. "\n"
io.stdout:write(text)
if out_path and out_path ~= "" then
    local f = assert(io.open(out_path, "w"))
    f:write(text)
    f:close()
end
