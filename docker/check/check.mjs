// check.mjs: checks docker/compose.yml and docker/Dockerfile without a Docker engine.
//
//   node docker/check/check.mjs        (docker/check.sh installs the packages and runs it)
//
// compose.yml: parsed as YAML 1.1 (merge keys), interpolated like Compose does with the values
// of .env.example, validated against the Compose Specification JSON schema (the copy that the
// dclint package bundles) with ajv, then held to this project's rules. Dockerfile: parsed and
// linted with dockerfile-utils / dockerfile-ast, then held to this project's rules.
// Prints one line per check; exits 1 if any failed.
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import Ajv from 'ajv';
import { validate as lintDockerfile } from 'dockerfile-utils';
import { DockerfileParser } from 'dockerfile-ast';

const here = path.dirname(fileURLToPath(import.meta.url));
const dockerDir = path.resolve(here, '..');
const root = path.resolve(dockerDir, '..');

let failures = 0;
function check(what, ok, detail) {
    if (ok) {
        console.log(`ok   ${what}`);
    } else {
        failures++;
        console.log(`FAIL ${what}${detail ? `: ${detail}` : ''}`);
    }
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// ---- .env.example

const envText = readFileSync(path.join(dockerDir, '.env.example'), 'utf8');
const envExample = {};
for (const line of envText.split('\n')) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m) envExample[m[1]] = m[2];
}

// ---- compose.yml

const composePath = path.join(dockerDir, 'compose.yml');
const composeText = readFileSync(composePath, 'utf8');
const doc = YAML.parseDocument(composeText, { merge: true, prettyErrors: true });
check('compose.yml parses as YAML', doc.errors.length === 0 && doc.warnings.length === 0,
    [...doc.errors, ...doc.warnings].map(String).join('; '));
const raw = doc.toJS({ maxAliasCount: 100 });

// Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
// ${VAR?error}, ${VAR:+alt}, ${VAR+alt}. Records every variable used.
const used = new Map();   // name -> { required, hasDefault }
function interpolate(s, env) {
    const re = /\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))/g;
    return s.replace(re, (all, dollar, name, op, arg, bare) => {
        if (dollar) return '$';
        name = name || bare;
        const u = used.get(name) || { required: false, hasDefault: false };
        if (op && op.endsWith('?')) u.required = true;
        if (op && (op.endsWith('-') || op.endsWith('+'))) u.hasDefault = true;
        used.set(name, u);
        const v = env[name];
        const set = v !== undefined && (!op || !op.startsWith(':') || v !== '');
        if (!op) return v ?? '';
        if (op.endsWith('-')) return set ? v : interpolate(arg, env);
        if (op.endsWith('+')) return set ? interpolate(arg, env) : '';
        if (!set) throw new Error(`required variable ${name} is missing: ${arg}`);
        return v;
    });
}
function interpolateAll(v, env) {
    if (typeof v === 'string') return interpolate(v, env);
    if (Array.isArray(v)) return v.map((x) => interpolateAll(x, env));
    if (v && typeof v === 'object') {
        const o = {};
        for (const [k, x] of Object.entries(v)) o[k] = interpolateAll(x, env);
        return o;
    }
    return v;
}

let compose = null;
try {
    compose = interpolateAll(raw, envExample);
    check('compose.yml interpolates with the values of .env.example', true);
} catch (e) {
    check('compose.yml interpolates with the values of .env.example', false, e.message);
}
// Without its variable, every ${VAR:?} must fail: no account or secret has a default.
for (const [name, u] of [...used]) {
    if (u.required) {
        let error = '';
        const env = { ...envExample };
        delete env[name];
        try { interpolateAll(raw, env); } catch (e) { error = e.message; }
        check(`\${${name}} is required (no default)`,
            error.startsWith(`required variable ${name} is missing`) && !u.hasDefault, error);
    }
}
for (const name of used.keys()) {
    check(`variable ${name} is in .env.example`, name in envExample || used.get(name).hasDefault);
}
for (const name of Object.keys(envExample)) {
    if (name === 'COMPOSE_PROJECT_NAME') {
        check('.env.example names the project lproc', envExample[name] === 'lproc');
    } else {
        check(`.env.example's ${name} is used by compose.yml`, used.has(name));
    }
}
for (const [name, value] of Object.entries(envExample)) {
    if (/PASS|SECRET|TOKEN/.test(name)) {
        check(`.env.example's ${name} is a placeholder`, value === 'CHANGE_ME', value);
    }
}

// The Compose Specification schema, as bundled by dclint.
const pkg = (name) => path.join(here, 'node_modules', name);
const version = (name) => JSON.parse(readFileSync(pkg(`${name}/package.json`), 'utf8')).version;
const schemaPath = pkg('dclint/schemas/compose.schema.json');
const schema = JSON.parse(readFileSync(schemaPath, 'utf8'));
// The file says "https://json-schema.org/draft-07/schema"; ajv knows draft-07 by its
// canonical id, so the schema is compiled (and checked against the meta-schema) under that id.
const ajv = new Ajv({ allErrors: true, strict: false });
const validate = ajv.compile({ ...schema, $schema: 'http://json-schema.org/draft-07/schema#' });
if (compose) {
    const valid = validate(compose);
    check(`compose.yml is valid against "${schema.title}" (${schema.$schema}, from ` +
        `dclint ${version('dclint')})`, valid,
        ajv.errorsText(validate.errors, { separator: '; ' }));
    // The schema must be able to say no: a misspelt key and a bad type fail.
    const broken = structuredClone(compose);
    broken.services.lake.restart_policy = 'always';
    broken.services.mysql.ports = 3306;
    check('the schema rejects a compose file with a misspelt key and a wrong type',
        !validate(broken));
}

const services = compose?.services ?? {};
const rawServices = raw?.services ?? {};
check('services are rabbitmq, mysql, phpmyadmin, producer, lake, clean',
    same(Object.keys(services).sort(),
        ['clean', 'lake', 'mysql', 'phpmyadmin', 'producer', 'rabbitmq']),
    Object.keys(services).join(', '));
for (const [name, s] of Object.entries(services)) {
    check(`${name}: restart unless-stopped`, s.restart === 'unless-stopped', s.restart);
}
const images = { rabbitmq: /^rabbitmq:[\d.]+-management$/, mysql: /^mysql:8(\.|$)/,
    phpmyadmin: /^phpmyadmin:/ };
for (const [name, re] of Object.entries(images)) {
    check(`${name}: image ${services[name]?.image}`, re.test(services[name]?.image ?? ''));
}

const testOf = (s) => [].concat(s?.healthcheck?.test ?? []).join(' ');
check('rabbitmq: healthcheck runs rabbitmq-diagnostics ping',
    /^CMD rabbitmq-diagnostics (-q )?ping$/.test(testOf(services.rabbitmq)), testOf(services.rabbitmq));
check('mysql: healthcheck runs mysqladmin ping',
    /^CMD(-SHELL)? .*mysqladmin ping\b/.test(testOf(services.mysql)), testOf(services.mysql));
check('mysql: no password on the healthcheck\'s command line',
    !/-p\S|--password/.test(testOf(rawServices.mysql)), testOf(rawServices.mysql));

// Ports: published on 127.0.0.1 by default (BIND_ADDRESS unset or as in .env.example).
const defaults = interpolateAll(raw, Object.fromEntries(Object.entries(envExample)
    .filter(([k]) => k !== 'BIND_ADDRESS')));
let nports = 0;
for (const [name, s] of Object.entries(defaults.services ?? {})) {
    for (const p of s.ports ?? []) {
        nports++;
        const host = typeof p === 'object' ? p.host_ip : String(p).split(':').length === 3
            ? String(p).split(':')[0] : '';
        check(`${name}: port ${typeof p === 'object' ? JSON.stringify(p) : p} is bound to ` +
            '127.0.0.1 by default', host === '127.0.0.1');
    }
}
check('published ports: RabbitMQ, its UI, MySQL, phpMyAdmin', nports === 4, String(nports));
check('.env.example keeps BIND_ADDRESS=127.0.0.1', envExample.BIND_ADDRESS === '127.0.0.1');
for (const name of ['producer', 'lake', 'clean']) {
    check(`${name}: publishes no port`, !services[name]?.ports);
}

// depends_on: each needs its servers healthy.
const needs = { producer: ['rabbitmq'], lake: ['mysql', 'rabbitmq'], clean: ['mysql', 'rabbitmq'],
    phpmyadmin: ['mysql'] };
for (const [name, deps] of Object.entries(needs)) {
    const d = services[name]?.depends_on ?? {};
    check(`${name}: depends on ${deps.join(' and ')} being healthy`,
        !Array.isArray(d) && same(Object.keys(d).sort(), deps)
        && deps.every((x) => d[x].condition === 'service_healthy'), JSON.stringify(d));
}

// Volumes: named volumes for the servers' data; a read-only bind mount of the logs.
const topVolumes = Object.keys(compose?.volumes ?? {}).sort();
check('named volumes rabbitmq-data, mysql-data and producer-state are declared', same(topVolumes,
    ['mysql-data', 'producer-state', 'rabbitmq-data']), topVolumes.join(', '));
check('rabbitmq: /var/lib/rabbitmq on rabbitmq-data',
    (services.rabbitmq?.volumes ?? []).includes('rabbitmq-data:/var/lib/rabbitmq'));
check('mysql: /var/lib/mysql on mysql-data',
    (services.mysql?.volumes ?? []).includes('mysql-data:/var/lib/mysql'));
const logMount = String((services.producer?.volumes ?? [])[0] ?? '').split(':');
check('producer: a host directory bind-mounted read-only on /logs',
    logMount.length === 3 && /^[./]/.test(logMount[0]) && logMount[1] === '/logs'
    && logMount[2] === 'ro', logMount.join(':'));

// The pipeline: one image built from docker/Dockerfile, its commands, its environment.
const commands = {
    producer: ['scripts/producer.lua', '--follow', '--checkpoint', '/state/access.checkpoint', '/logs/access.log'],
    lake: ['scripts/lake.lua'], clean: ['scripts/clean.lua'],
};
for (const [name, cmd] of Object.entries(commands)) {
    const s = services[name] ?? {};
    check(`${name}: command lproc ${cmd.join(' ')}`, same(s.command, cmd), JSON.stringify(s.command));
    check(`${name}: built from docker/Dockerfile (context: the repository)`,
        s.build?.context === '..' && s.build?.dockerfile === 'docker/Dockerfile'
        && s.image === services.producer?.image);
    const env = s.environment ?? {};
    const vars = ['RABBIT_USER', 'RABBIT_PASSWORD', 'RABBIT_HOST', 'RABBIT_PORT', 'RABBIT_VHOST',
        'MYSQL_USER', 'MYSQL_PASSWORD', 'MYSQL_DATABASE', 'HOST', 'PORT', 'LPROC_GEOIP_DB'];
    const missing = vars.filter((v) => !(v in env) || env[v] === '');
    check(`${name}: environment sets ${vars.join(' ')}`, missing.length === 0,
        `missing ${missing.join(' ')}`);
}
// Secrets: in compose.yml only as ${VAR} references.
for (const [name, s] of Object.entries(rawServices)) {
    for (const [k, v] of Object.entries(s.environment ?? {})) {
        if (/PASS|SECRET|TOKEN/.test(k)) {
            check(`${name}: ${k} comes from .env`, /^\$\{[A-Z_]+(:\?[^}]*)?\}$/.test(String(v)), v);
        }
    }
}

// ---- Dockerfile

const dockerfilePath = path.join(dockerDir, 'Dockerfile');
const dockerfileText = readFileSync(dockerfilePath, 'utf8');
const diags = lintDockerfile(dockerfileText);
for (const d of diags) {
    console.log(`     Dockerfile:${d.range.start.line + 1}: ${d.severity === 1 ? 'error' : 'warning'}: ${d.message}`);
}
check(`Dockerfile passes dockerfile-utils ${version('dockerfile-utils')} ` +
    'validation', !diags.some((d) => d.severity === 1));

const dockerfile = DockerfileParser.parse(dockerfileText);
const stages = [];
for (const ins of dockerfile.getInstructions()) {
    const kw = ins.getKeyword();
    if (kw === 'FROM') stages.push({ from: ins, ins: [] });
    else if (stages.length) stages[stages.length - 1].ins.push(ins);
}
check('Dockerfile has two stages: build and runtime', stages.length === 2, String(stages.length));
const [build, runtime] = stages;
check('build stage: FROM debian:bookworm-slim AS build',
    build?.from.getImageName() === 'debian' && build?.from.getImageTag() === 'bookworm-slim'
    && build?.from.getBuildStage() === 'build');
check('runtime stage: FROM debian:bookworm-slim',
    runtime?.from.getImageName() === 'debian' && runtime?.from.getImageTag() === 'bookworm-slim');

// The README's build commands (the Makefile's usage header when there is no README).
const runs = (stage) => (stage?.ins ?? []).filter((i) => i.getKeyword() === 'RUN')
    .map((i) => i.getArgumentsContent().replace(/\\\n/g, ' ').replace(/\s+/g, ' ').trim());
const readme = path.join(root, 'README.md');
const source = existsSync(readme) ? 'README.md' : 'Makefile';
const docText = readFileSync(path.join(root, source), 'utf8');
const documented = ['make deps', 'make'].filter((c) => new RegExp(
    `(^|\\n)\\s*(#\\s*)?(\\$ )?${c.replace(' ', '\\s+')}(\\s|$)`).test(docText));
check(`${source} gives the build commands "make deps" and "make"`, documented.length === 2,
    documented.join(', '));
const buildRuns = runs(build);
for (const c of documented) {
    check(`build stage: RUN ${c}`, buildRuns.some((r) => r === c || r.startsWith(`${c} ||`)),
        buildRuns.join(' | '));
}
const installs = (stage) => runs(stage).flatMap((r) => {
    const m = /apt-get install ((?:-\S+ )*)(.*?)(?: &&|$)/.exec(r);
    return m ? m[2].split(' ').filter((w) => w && !w.startsWith('-')) : [];
});
const wanted = ['liblua5.4-0', 'librabbitmq4', 'libmariadb3', 'libpcre2-8-0', 'libssl3',
    'libmaxminddb0', 'zlib1g'];
check(`runtime stage installs exactly ${wanted.join(' ')}`, same(installs(runtime).sort(),
    [...wanted].sort()), installs(runtime).join(' '));
check('runtime stage installs no -dev package and runs no make',
    !runs(runtime).some((r) => /-dev\b|\bmake\b|build-essential/.test(r)));
const copies = (runtime?.ins ?? []).filter((i) => i.getKeyword() === 'COPY')
    .map((i) => [...i.getFlags().map((f) => `--${f.getName()}=${f.getValue()}`),
        i.getArgumentsContent()].join(' ').replace(/\s+/g, ' ').trim());
for (const want of ['--from=build /src/build/lproc ', '--from=build /src/build/country.mmdb ',
                    '--from=build /src/scripts/ ']) {
    check(`runtime stage: COPY ${want.trim()}`, copies.some((c) => c.startsWith(want)),
        copies.join(' | '));
}
const user = (runtime?.ins ?? []).filter((i) => i.getKeyword() === 'USER')
    .map((i) => i.getArgumentsContent());
check('runtime stage runs as a non-root user', user.length > 0 && !/^(root|0)$/.test(user.at(-1)),
    user.join(', '));
check('no ADD of a URL', !dockerfile.getInstructions().some((i) => i.getKeyword() === 'ADD'
    && /https?:/.test(i.getArgumentsContent() ?? '')));

console.log(failures ? `docker/check: ${failures} check(s) failed` : 'docker/check: all checks passed');
process.exit(failures ? 1 : 0);
