"""Generate wormhole's SQL from one source of truth.

The SQL objects and the PL/Python bodies are produced here from ``wormhole/runtime/``: the
runtime modules are embedded as text into ``_wormhole_boot()``, which loads them into ``GD`` once
per backend. The database therefore never depends on a package installed in the server's
Python, and the schema version *is* the runtime version.

``python -m wormhole.schema > schema.sql`` (or ``wormhole schema``) writes the file checked in at
the repository root; a test fails when that file is stale.

The script is idempotent: tables are created if missing and never dropped, seeds use
``ON CONFLICT DO NOTHING``, functions are replaced. Running it again (or a newer version) keeps
the whitelist, the cached functions, approvals and the audit log.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .runtime import MODULES, VERSION

RUNTIME_DIR = Path(__file__).parent / "runtime"
BODY_TAG = "$wormhole_body$"

#: modules allowed out of the box (their vetted names come from runtime/namespace.py).
DEFAULT_MODULES: tuple[tuple[str, bool, str], ...] = (
    ("math", True, "math functions"),
    ("cmath", True, "complex math"),
    ("decimal", True, "Decimal arithmetic"),
    ("fractions", True, "rational numbers"),
    ("statistics", True, "descriptive statistics"),
    ("datetime", True, "dates and times"),
    ("json", True, "JSON encoding"),
    ("re", True, "regular expressions (bounded by the call's time limit)"),
    ("collections", True, "containers"),
    ("itertools", True, "iterator building blocks"),
    ("functools", True, "reduce, partial, lru_cache"),
    ("heapq", True, "heaps"),
    ("bisect", True, "binary search"),
    ("string", True, "string constants"),
    ("textwrap", True, "text wrapping"),
    ("random", True, "pseudo-random numbers"),
    ("uuid", True, "UUID objects"),
    ("os", False, "operating system access: never"),
    ("sys", False, "interpreter internals: never"),
    ("subprocess", False, "processes: never"),
    ("socket", False, "network: never"),
    ("requests", False, "network: never"),
)

DEFAULT_LIMITS: tuple[tuple[str, int, str], ...] = (
    ("timeout_ms", 0, "wall-clock limit per call in ms (0: statement_timeout only)"),
    ("memory_mb", 512, "address-space limit of the confined worker"),
    ("cpu_seconds", 60, "CPU-time limit of the confined worker per process"),
    ("max_output_bytes", 65536, "print() output returned per call"),
    ("max_result_bytes", 268435456, "encoded result size per call"),
    ("max_args_bytes", 67108864, "encoded argument size per call"),
)


def runtime_sources() -> dict[str, str]:
    """The runtime's modules as text, keyed by module name, in load order."""
    sources = {"__init__": (RUNTIME_DIR / "__init__.py").read_text("utf-8")}
    for name in MODULES:
        sources[name] = (RUNTIME_DIR / f"{name}.py").read_text("utf-8")
    return sources


SOURCE_TAG = "$wormhole_src$"


def code_tag(sources: dict[str, str]) -> str:
    """Identifies these runtime sources (the compiled-code cache is keyed by it)."""
    import hashlib

    return hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()


def _runtime_rows(sources: dict[str, str], tag: str) -> str:
    """INSERTs of the runtime's module sources into ``_wormhole_code`` (code filled later)."""
    out = []
    for name, text in sources.items():
        if SOURCE_TAG in text or BODY_TAG in text:
            raise ValueError(f"runtime/{name}.py contains a reserved dollar-quote tag")
        out.append(
            f"INSERT INTO public._wormhole_code (tag, module, source) VALUES\n"
            f"  ('{tag}', '{name}', {SOURCE_TAG}{text}{SOURCE_TAG});\n"
        )
    return "".join(out)


def _boot_body(tag: str) -> str:
    """Load the runtime into GD, lazily: each module is unmarshalled (from the code the install
    script cached in ``_wormhole_code``) or compiled (from the source beside it) only when it is
    first imported. A warm in-process call never imports the parser (``policy``) nor the
    worker's machinery, so a new backend does not pay for them. Sources are fetched only when
    needed (a module without usable code, or a worker that must compile)."""
    pkgname = f"wormhole_rt_{VERSION.replace('.', '_')}"
    return f"""import sys, marshal
_key = 'wormhole.runtime/{VERSION}'
if _key not in GD:
    _bootstrap = sys.modules['_frozen_importlib']
    _magic = sys.modules['_frozen_importlib_external'].MAGIC_NUMBER
    _plan = plpy.prepare(
        'SELECT module, CASE WHEN magic OPERATOR(pg_catalog.=) $2 THEN code END AS code, '
        'CASE WHEN code IS NULL OR magic IS DISTINCT FROM $2 THEN source END AS source '
        'FROM public._wormhole_code WHERE tag OPERATOR(pg_catalog.=) $1',
        ['pg_catalog.text', 'pg_catalog.bytea'])
    _rows = {{r['module']: r for r in plpy.execute(_plan, ['{tag}', _magic])}}
    if '__init__' not in _rows:
        plpy.error('wormhole: the runtime is missing from public._wormhole_code',
                   hint='reinstall the schema: wormhole install --dsn ...')
    _pkgname = '{pkgname}'

    class _Sources(dict):
        # the modules' source text, fetched on first use (compiling, or a worker without
        # marshalled code); a new backend usually never needs it
        fetched = False

        def __missing__(self, name):
            if not self.fetched:
                self.fetched = True
                plan = plpy.prepare('SELECT module, source FROM public._wormhole_code '
                                    'WHERE tag OPERATOR(pg_catalog.=) $1', ['pg_catalog.text'])
                for r in plpy.execute(plan, ['{tag}']):
                    self.setdefault(r['module'], r['source'])
            return dict.__getitem__(self, name)

    _sources = _Sources((n, r['source']) for n, r in _rows.items() if r['source'] is not None)

    class _Codes(dict):
        # module -> code object, made on first use (unmarshalled, else compiled)
        def __missing__(self, name):
            if name not in _rows:
                raise KeyError(name)
            raw = _rows[name]['code']
            if raw is not None:
                code = marshal.loads(raw)
            else:
                code = compile(_sources[name], '<wormhole runtime ' + name + '>', 'exec')
            self[name] = code
            return code

        def get(self, name, default=None):
            try:
                return self[name]
            except KeyError:
                return default

    _codes = _Codes()

    class _Loader:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            head, _, name = fullname.rpartition('.')
            if head == _pkgname and name in _rows:
                return _bootstrap.ModuleSpec(fullname, _Loader)
            return None

        @staticmethod
        def create_module(spec):
            return None

        @staticmethod
        def exec_module(module):
            exec(_codes[module.__name__.rpartition('.')[2]], module.__dict__)

    _pkg = type(sys)(_pkgname)
    _pkg.__path__ = []
    _pkg.__package__ = _pkgname
    sys.modules[_pkgname] = _pkg
    exec(_codes['__init__'], _pkg.__dict__)
    _pkg.SOURCES = _sources
    _pkg.CODES = _codes
    _pkg.CODE_TAG = '{tag}'
    if not any(f is _Loader for f in sys.meta_path):
        sys.meta_path.append(_Loader)
    if GD.pop('wormhole.prestart', None) is True:
        # wormhole_execute's entry predicted the worker (_wormhole_worker_hint): start it now,
        # so its start-up runs while this backend imports the host (spawn.prestart)
        try:
            __import__(_pkgname + '.spawn')
            sys.modules[_pkgname + '.spawn'].prestart(
                {{n: _rows[n]['code'] for n in _pkg.WORKER_MODULES if n in _rows}},
                _pkg.WORKER_MODULES)
        except Exception:
            pass
    __import__(_pkgname + '.host')
    GD[_key] = _pkg"""


def _entry(call: str, prestart: bool = False) -> str:
    """The body of a plpython3u entry point: find the runtime (boot once), then call it.

    With ``prestart`` (``wormhole_execute``), a backend's first call first asks whether it will
    most likely run in the confined worker and, if so, has the boot start that worker before
    it imports the host (``runtime/spawn.py``): a prediction, never the decision."""
    hint = (
        "    try:\n"
        "        if plpy.execute(plpy.prepare('SELECT public._wormhole_worker_hint($1, "
        "current_user::pg_catalog.text) AS w', ['pg_catalog.text']), [function_hash])[0]['w']:\n"
        "            GD['wormhole.prestart'] = True\n"
        "    except plpy.SPIError as _e:\n"
        "        # a broken or missing hint is passed over (it only predicts), but a cancel or\n"
        "        # statement_timeout (class 57) ends the call as it would anywhere else\n"
        "        if (getattr(_e, 'sqlstate', None) or '').startswith('57'):\n"
        "            raise\n"
    ) if prestart else ""
    return (
        f"_rt = GD.get('wormhole.runtime/{VERSION}')\n"
        "if _rt is None:\n"
        f"{hint}"
        "    plpy.execute('SELECT public._wormhole_boot()')\n"
        f"    _rt = GD['wormhole.runtime/{VERSION}']\n"
        f"return {call}"
    )


def _values(rows: tuple[tuple[object, ...], ...]) -> str:
    def lit(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        return "'" + str(v).replace("'", "''") + "'"

    return ",\n  ".join("(" + ", ".join(lit(v) for v in row) + ")" for row in rows)


PRIVATE_DEFINER = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"


def generate(for_psql: bool = True) -> str:
    """The complete install/upgrade script (``for_psql=False``: without psql meta-commands,
    to send over a driver connection)."""
    t = BODY_TAG
    sources = runtime_sources()
    tag = code_tag(sources)
    psql_line = "\\set ON_ERROR_STOP on" if for_psql else "-- (sent over a connection)"
    parts: list[str] = []
    add = parts.append
    add(f"""-- wormhole {VERSION}: install or upgrade. GENERATED by `wormhole schema`; do not edit.
-- Run as a superuser:  psql -d mydb -f schema.sql   (or: wormhole install --dsn ...)
-- Idempotent: keeps the module whitelist, cached functions, approvals and the audit log.
{psql_line}
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS plpython3u;

-- Roles (cluster-wide). wormhole_owner owns every object and logs in never;
-- wormhole_user may install and execute; wormhole_admin manages whitelist, limits, approvals.
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'wormhole_owner') THEN
    CREATE ROLE wormhole_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'wormhole_user') THEN
    CREATE ROLE wormhole_user NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'wormhole_admin') THEN
    CREATE ROLE wormhole_admin NOLOGIN;
  END IF;
END
$roles$;
GRANT USAGE ON SCHEMA public TO wormhole_owner;
GRANT CREATE ON SCHEMA public TO wormhole_owner;

-- Tables --------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.wormhole_allowed_modules (
  module_name text PRIMARY KEY,
  allowed     boolean NOT NULL DEFAULT true,
  names       text[],  -- public names user code may use; NULL: the runtime's vetted catalogue
  notes       text
);
CREATE TABLE IF NOT EXISTS public.wormhole_functions (
  hash         text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{{64}}$'),
  name         text NOT NULL,
  source       text NOT NULL,
  installed_by name NOT NULL,
  installed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- the checked, compiled code (marshal) that wormhole_install made, for the Python bytecode
-- version (code_magic) and the whitelist (code_key) it was checked under: a backend runs it
-- without importing the policy's parser; on any mismatch it checks the source again
ALTER TABLE public.wormhole_functions ADD COLUMN IF NOT EXISTS code bytea,
  ADD COLUMN IF NOT EXISTS code_magic bytea, ADD COLUMN IF NOT EXISTS code_key text;
-- the statements every call of the function starts with, as far as its source says so (JSON,
-- valid with the code; runtime/policy.py: ahead_statements): the backend of a confined worker
-- runs them before the worker asks
ALTER TABLE public.wormhole_functions ADD COLUMN IF NOT EXISTS ahead text;
CREATE TABLE IF NOT EXISTS public.wormhole_audit (
  id      bigserial PRIMARY KEY,
  at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  role    name NOT NULL,
  event   text NOT NULL,
  hash    text,
  name    text,
  source  text,
  verdict text,
  reason  text,
  detail  jsonb
);
CREATE TABLE IF NOT EXISTS public.wormhole_approvals (
  hash        text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{{64}}$'),
  approved_by name NOT NULL,
  approved_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  note        text
);
CREATE TABLE IF NOT EXISTS public.wormhole_trusted_roles (
  role_name  name PRIMARY KEY,
  granted_by name NOT NULL DEFAULT session_user,
  granted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  note       text
);
CREATE TABLE IF NOT EXISTS public.wormhole_limits (
  name  text PRIMARY KEY,
  value bigint NOT NULL CHECK (value >= 0),
  notes text
);
CREATE TABLE IF NOT EXISTS public.wormhole_settings (
  name  text PRIMARY KEY,
  value text NOT NULL
);
-- The runtime itself: module sources, and their compiled code (marshal, for the server's
-- Python: `magic`), cached by the install script so backends need not compile them.
DROP TABLE IF EXISTS public._wormhole_code;  -- rebuilt on every install or upgrade
CREATE TABLE public._wormhole_code (
  tag    text NOT NULL,   -- sha256 of the runtime sources
  module text NOT NULL,
  source text NOT NULL,
  code   bytea,           -- marshal of the module's code object (our own code only)
  magic  bytea,           -- importlib.util.MAGIC_NUMBER of the Python that compiled it
  PRIMARY KEY (tag, module)
);
CREATE TABLE IF NOT EXISTS public._wormhole_state (
  id      int PRIMARY KEY CHECK (id = 1),
  version bigint NOT NULL
);
INSERT INTO public._wormhole_state VALUES (1, 1) ON CONFLICT (id) DO NOTHING;
{_runtime_rows(sources, tag)}
INSERT INTO public.wormhole_allowed_modules (module_name, allowed, notes) VALUES
  {_values(DEFAULT_MODULES)}
ON CONFLICT (module_name) DO NOTHING;
INSERT INTO public.wormhole_limits (name, value, notes) VALUES
  {_values(DEFAULT_LIMITS)}
ON CONFLICT (name) DO NOTHING;
INSERT INTO public.wormhole_settings (name, value) VALUES ('schema_version', '{VERSION}')
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;

ALTER TABLE public.wormhole_allowed_modules OWNER TO wormhole_owner;
ALTER TABLE public.wormhole_functions OWNER TO wormhole_owner;
ALTER TABLE public.wormhole_audit OWNER TO wormhole_owner;
ALTER TABLE public.wormhole_approvals OWNER TO wormhole_owner;
ALTER TABLE public.wormhole_trusted_roles OWNER TO wormhole_owner;
ALTER TABLE public.wormhole_limits OWNER TO wormhole_owner;
ALTER TABLE public.wormhole_settings OWNER TO wormhole_owner;
ALTER TABLE public._wormhole_state OWNER TO wormhole_owner;
ALTER TABLE public._wormhole_code OWNER TO wormhole_owner;
ALTER SEQUENCE public.wormhole_audit_id_seq OWNER TO wormhole_owner;

-- Configuration changes bump a version (backends reload whitelist and limits) and are audited.
-- Touching wormhole_execute's catalog row (COST 100 is its cost already: nothing else changes)
-- makes PL/Python give it a fresh SD in every backend at its next transaction; the runtime
-- keeps a "configuration is current" mark there, so a warm call reads no version at all
-- (host._refresh_config).
CREATE OR REPLACE FUNCTION public._wormhole_invalidate() RETURNS void
LANGUAGE plpgsql {PRIVATE_DEFINER} AS $fn$
BEGIN
  UPDATE public._wormhole_state SET version = version + 1 WHERE id = 1;
  IF pg_catalog.to_regprocedure('public.wormhole_execute(text, text, text)') IS NOT NULL THEN
    ALTER FUNCTION public.wormhole_execute(text, text, text) COST 100;
  END IF;
END
$fn$;
ALTER FUNCTION public._wormhole_invalidate() OWNER TO wormhole_owner;
REVOKE ALL ON FUNCTION public._wormhole_invalidate() FROM PUBLIC;
CREATE OR REPLACE FUNCTION public._wormhole_config_changed() RETURNS trigger
LANGUAGE plpgsql {PRIVATE_DEFINER} AS $fn$
BEGIN
  PERFORM public._wormhole_invalidate();
  INSERT INTO public.wormhole_audit (role, event, verdict, detail)
  VALUES (session_user, 'config', TG_OP,
          pg_catalog.jsonb_build_object(
            'table', TG_TABLE_NAME,
            'old', CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN pg_catalog.to_jsonb(OLD) END,
            'new', CASE WHEN TG_OP IN ('UPDATE', 'INSERT') THEN pg_catalog.to_jsonb(NEW) END));
  RETURN NULL;
END
$fn$;
ALTER FUNCTION public._wormhole_config_changed() OWNER TO wormhole_owner;
CREATE OR REPLACE FUNCTION public._wormhole_functions_changed() RETURNS trigger
LANGUAGE plpgsql {PRIVATE_DEFINER} AS $fn$
BEGIN
  PERFORM public._wormhole_invalidate();
  RETURN NULL;
END
$fn$;
ALTER FUNCTION public._wormhole_functions_changed() OWNER TO wormhole_owner;
""")
    for table in (
        "wormhole_allowed_modules",
        "wormhole_limits",
        "wormhole_settings",
        "wormhole_approvals",
        "wormhole_trusted_roles",
    ):
        add(
            f"DROP TRIGGER IF EXISTS wormhole_config_changed ON public.{table};\n"
            f"CREATE TRIGGER wormhole_config_changed AFTER INSERT OR UPDATE OR DELETE "
            f"ON public.{table}\n"
            f"  FOR EACH ROW EXECUTE FUNCTION public._wormhole_config_changed();\n"
        )
    add(
        "DROP TRIGGER IF EXISTS wormhole_functions_changed ON public.wormhole_functions;\n"
        "CREATE TRIGGER wormhole_functions_changed AFTER UPDATE OR DELETE "
        "ON public.wormhole_functions\n"
        "  FOR EACH STATEMENT EXECUTE FUNCTION public._wormhole_functions_changed();\n"
    )
    add(f"""
-- Private helpers (SECURITY DEFINER, pinned search_path, everything schema-qualified) ---------
DROP FUNCTION IF EXISTS public._wormhole_source(text);
DO $do$ BEGIN  -- an older install's version has fewer OUT columns: replace it
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_proc
             WHERE oid = 'public._wormhole_function(text)'::pg_catalog.regprocedure
               AND ('ahead' = ANY (proargnames)) IS NOT TRUE) THEN
    DROP FUNCTION public._wormhole_function(text);
  END IF;
EXCEPTION WHEN undefined_function THEN NULL;
END $do$;
CREATE OR REPLACE FUNCTION public._wormhole_function(function_hash text,
  OUT source text, OUT name text, OUT code bytea, OUT code_magic bytea, OUT code_key text,
  OUT ahead text)
LANGUAGE sql STABLE {PRIVATE_DEFINER} AS $fn$
  SELECT f.source, f.name, f.code, f.code_magic, f.code_key, f.ahead
  FROM public.wormhole_functions f WHERE f.hash = function_hash
$fn$;
CREATE OR REPLACE FUNCTION public._wormhole_config() RETURNS text
LANGUAGE sql STABLE {PRIVATE_DEFINER} AS $fn$
  SELECT pg_catalog.json_build_object(
    'modules', COALESCE((SELECT pg_catalog.json_object_agg(m.module_name, m.names)
                         FROM public.wormhole_allowed_modules m WHERE m.allowed), '{{}}'::json),
    'limits', COALESCE((SELECT pg_catalog.json_object_agg(l.name, l.value)
                        FROM public.wormhole_limits l), '{{}}'::json),
    'settings', COALESCE((SELECT pg_catalog.json_object_agg(s.name, s.value)
                          FROM public.wormhole_settings s), '{{}}'::json),
    'approved', COALESCE((SELECT pg_catalog.json_agg(a.hash)
                          FROM public.wormhole_approvals a), '[]'::json),
    'trusted', COALESCE((SELECT pg_catalog.json_agg(t.role_name)
                         FROM public.wormhole_trusted_roles t), '[]'::json))::text
$fn$;

-- A prediction for a backend's first wormhole_execute (runtime/spawn.py): will this call most
-- likely run in the confined worker? Then the boot starts the worker before it imports the
-- host. The host's choose_executor still decides; a wrong guess costs an idle worker or no
-- overlap, never a different execution mode.
CREATE OR REPLACE FUNCTION public._wormhole_worker_hint(function_hash text, role_name text)
RETURNS boolean LANGUAGE sql STABLE {PRIVATE_DEFINER} AS $fn$
  SELECT COALESCE($1 ~ '^[0-9a-f]{{64}}$', false)
     AND COALESCE((SELECT s.value = 'worker' FROM public.wormhole_settings s
                   WHERE s.name = 'untrusted_execution'), false)
     AND NOT EXISTS (SELECT 1 FROM public.wormhole_approvals a WHERE a.hash = $1)
     AND NOT EXISTS (SELECT 1 FROM public.wormhole_trusted_roles t WHERE t.role_name = $2)
$fn$;

-- The runtime, embedded: loaded into GD once per backend -------------------------------------
CREATE OR REPLACE FUNCTION public._wormhole_boot() RETURNS void
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS {t}
{_boot_body(tag)}
{t};

-- Public API ---------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.wormhole_version() RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$ SELECT '{VERSION}'::text $fn$;

CREATE OR REPLACE FUNCTION public.wormhole_install(source text) RETURNS text
LANGUAGE plpython3u {PRIVATE_DEFINER} AS {t}
{_entry("_rt.host.install(plpy, GD, _rt.SOURCES, source)")}
{t};
COMMENT ON FUNCTION public.wormhole_install(text) IS
  'Check a function against the policy and cache it; returns its sha256. Audited.';

CREATE OR REPLACE FUNCTION public.wormhole_execute(
  function_hash text, args_json text, missing text DEFAULT 'error')
RETURNS text LANGUAGE plpython3u AS {t}
{_entry("_rt.host.execute(plpy, GD, _rt.SOURCES, function_hash, args_json, missing, SD)",
        prestart=True)}
{t};
COMMENT ON FUNCTION public.wormhole_execute(text, text, text) IS
  'Run an installed function as the calling role; returns a JSON payload (result or error).';

CREATE OR REPLACE FUNCTION public.wormhole_query(sql text, params_json text DEFAULT '[]')
RETURNS text LANGUAGE plpython3u AS {t}
{_entry("_rt.host.query(plpy, GD, _rt.SOURCES, sql, params_json)")}
{t};
COMMENT ON FUNCTION public.wormhole_query(text, text) IS
  'query() from SQL: $n parameters, rows as wormhole codec JSON';

CREATE OR REPLACE FUNCTION public._wormhole_cache_code() RETURNS int
LANGUAGE plpython3u {PRIVATE_DEFINER} AS {t}
{_entry("_rt.host.cache_code(plpy, GD, _rt)")}
{t};

CREATE OR REPLACE FUNCTION public._wormhole_selftest() RETURNS text
LANGUAGE plpython3u AS {t}
{_entry("_rt.host.selftest(plpy, GD, _rt.SOURCES)")}
{t};

-- Administration (wormhole_admin) ------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.wormhole_approve(function_hash text, note text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql {PRIVATE_DEFINER} AS $fn$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM public.wormhole_functions f WHERE f.hash = function_hash) THEN
    RAISE EXCEPTION 'wormhole: no installed function has hash %', function_hash
      USING ERRCODE = 'WH004', HINT = 'install it first; approve the hash the client prints';
  END IF;
  INSERT INTO public.wormhole_approvals (hash, approved_by, note)
  VALUES (function_hash, session_user, note)
  ON CONFLICT (hash) DO UPDATE SET approved_by = EXCLUDED.approved_by,
    approved_at = pg_catalog.now(), note = EXCLUDED.note;
END
$fn$;
CREATE OR REPLACE FUNCTION public.wormhole_revoke(function_hash text) RETURNS void
LANGUAGE plpgsql {PRIVATE_DEFINER} AS $fn$
BEGIN
  DELETE FROM public.wormhole_approvals a WHERE a.hash = function_hash;
END
$fn$;

-- Ownership and privileges: PUBLIC gets nothing ------------------------------------------------
""")
    functions = (
        "_wormhole_function(text)",
        "_wormhole_config()",
        "_wormhole_worker_hint(text, text)",
        "_wormhole_boot()",
        "wormhole_version()",
        "wormhole_install(text)",
        "wormhole_execute(text, text, text)",
        "wormhole_query(text, text)",
        "_wormhole_selftest()",
        "_wormhole_cache_code()",
        "wormhole_approve(text, text)",
        "wormhole_revoke(text)",
    )
    for fn in functions:
        add(f"ALTER FUNCTION public.{fn} OWNER TO wormhole_owner;\n")
        add(f"REVOKE ALL ON FUNCTION public.{fn} FROM PUBLIC;\n")
    for fn in functions[:8]:
        add(f"GRANT EXECUTE ON FUNCTION public.{fn} TO wormhole_user;\n")
    add("""GRANT EXECUTE ON FUNCTION public._wormhole_boot() TO wormhole_admin;
GRANT EXECUTE ON FUNCTION public.wormhole_approve(text, text) TO wormhole_admin;
GRANT EXECUTE ON FUNCTION public.wormhole_revoke(text) TO wormhole_admin;
GRANT EXECUTE ON FUNCTION public._wormhole_config() TO wormhole_admin;
GRANT EXECUTE ON FUNCTION public._wormhole_selftest() TO wormhole_admin;
REVOKE ALL ON public.wormhole_allowed_modules, public.wormhole_functions, public.wormhole_audit,
  public.wormhole_approvals, public.wormhole_trusted_roles, public.wormhole_limits,
  public.wormhole_settings, public._wormhole_state, public._wormhole_code FROM PUBLIC;
GRANT SELECT ON public._wormhole_code TO wormhole_user, wormhole_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.wormhole_allowed_modules, public.wormhole_limits,
  public.wormhole_trusted_roles, public.wormhole_settings TO wormhole_admin;
GRANT SELECT ON public.wormhole_functions, public.wormhole_audit, public.wormhole_approvals
  TO wormhole_admin;
-- the configuration version only: read on every call to know when to reload (harmless)
GRANT SELECT ON public._wormhole_state TO wormhole_user, wormhole_admin;

-- Enable the confined worker only where it works on this server (bubblewrap, user namespaces).
SELECT public._wormhole_selftest() AS wormhole_boundary;
SELECT public._wormhole_cache_code() AS wormhole_cached_modules;
COMMIT;
""")
    return "".join(parts)


def main() -> None:
    sys.stdout.write(generate())


if __name__ == "__main__":
    main()
