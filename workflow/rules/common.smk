# Helpers shared by the rules: config lookups with clear errors, the config checks, target paths,
# stage settings.
import ast
import difflib
import hashlib
import json
import math
import os
import re
import shlex
import sys
from functools import cache
from importlib.metadata import version
from pathlib import Path

import yaml
from snakemake.logging import logger

R = "results"
SEARCH_METHODS = ["detnas", "random", "clsnas", "scratch"]
# Threads a training, scoring or split job can use. Snakemake gives a job at most the --cores of a
# local run (a workstation's `--cores 16` runs a serial chain on 16 cores) and --max-threads, if set
# (`make demo` sets 1: its tiny networks finish sooner as one-thread jobs side by side); on SLURM the
# profile's set-threads decide (8 CPUs per GPU for training and search).
JOB_THREADS = 64
METHODS = SEARCH_METHODS + ["shufflenetv2"]  # the paper's rows (the architectures figure draws these)
# retrained too, for the ranking and the comparison, but no row of the paper's and not in the
# architectures figure (its blocks are shufflenetv2's)
EXTRA_METHODS = ["shufflenetv2_unscaled"]
COMPARED_METHODS = METHODS + EXTRA_METHODS  # the comparison's rows, with the random architectures' one
# training-free baselines (workflow/rules/training_free.smk): controls pick the feasible maximum of a
# count, proxy searches run the EA with a zero-cost proxy as fitness; an experiment lists which it runs
CONTROL_METHODS = ["flops_max", "params_max"]
PROXY_METHODS = ["synflow", "naswot", "zico", "mae_entropy"]
TRAINING_FREE = CONTROL_METHODS + PROXY_METHODS
# the authors' published architectures, retrained as they are: published_<name> within the
# experiment's space and FLOPs bounds, reference_<name> outside the budget
PUBLISHED_RE = r"(?:published|reference)_[A-Za-z0-9_.]+"
# every method a retrain/evaluate rule builds besides DetNAS (whose final.json is the experiment's own)
RETRAINED_RE = "|".join(["random", "clsnas", "scratch", "shufflenetv2", "shufflenetv2_unscaled", r"random_arch_[0-9]+",
                         *TRAINING_FREE, PUBLISHED_RE])


def extra_methods(name):
    """The experiment's training-free and published methods, in the config's order."""
    e = experiment(name)
    return (list(e["training_free"]["methods"]) + [f"published_{n}" for n in e["published"]]
            + [f"reference_{n}" for n in e["references"]])


def compared_methods(name):
    """Every method of the experiment's comparison (the random architectures' row aside)."""
    return COMPARED_METHODS + extra_methods(name)


def _entry(section, name, what):
    try:
        return config[section][name]
    except KeyError:
        known = ", ".join(config.get(section, {})) or "(none)"
        raise ValueError(f"config/config.yaml: {what} {name!r} is not defined under {section}: (known: {known})") from None


def experiment(name):
    return _entry("experiments", name, "experiment")


def detection_data(name):
    return _entry("detection_data", name, "detection dataset")


def classification_data(name):
    return _entry("classification_data", name, "classification dataset")


def pretrain_run(name):
    return _entry("pretrain", name, "pretrain run")


# -- config checks ---------------------------------------------------------------------------------
# A configuration mistake must stop a run in seconds, not after two days of supernet training. The
# Snakefile runs these checks when it loads (so `snakemake -n` shows them too), before any job;
# `stop` prints one line per problem, each starting with its config key path, and exits.


def stop(problems):
    """End Snakemake now, before any job runs, when there are problems: one line each, exit status 1.

    A raised exception would put Snakemake's "<Error> in file ..., line ..." line and a traceback
    around the message; the problems alone are the clearer report.
    """
    if problems:
        print("\n".join(problems), file=sys.stderr, flush=True)
        sys.exit(1)


def key_path(*keys):
    """The dotted path of a config key, list positions as [i]: `detection_data.voc.train[1]`."""
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else f".{k}" if out else str(k)
    return out


def executing():
    """Whether this invocation runs jobs (False for a dry run, --touch, --dag, --summary, ...)."""
    return workflow.executor_plugin is not None and not workflow.dryrun and not workflow.touch


def schema_problems(config, schema_file):
    """The config's schema violations, one line each: `<key path>: <problem>`.

    Snakemake's `validate` reports only one, as a page of jsonschema dump; this reads the same
    schema with jsonschema directly.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [jsonschema.exceptions.best_match([e]) for e in validator.iter_errors(config)]
    # a mistake inside an entry can also fail a vaguer check of the entry itself (a wrong `type`
    # leaves its type's keys unevaluated): report the specific one
    paths = [tuple(e.absolute_path) for e in errors]
    kept = [e for e, p in zip(errors, paths) if not any(len(q) > len(p) and q[: len(p)] == p for q in paths)]
    return list(dict.fromkeys(line for e in kept for line in _schema_error_lines(e, validator)))


def _schema_error_lines(error, validator):
    path = list(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        # jsonschema names them in its message: "('log_evry', 'x' were unexpected)"
        m = re.search(r"\((.*) (?:was|were) unexpected\)", error.message)
        try:
            unknown = ast.literal_eval(f"[{m.group(1)}]") if m else []
        except (SyntaxError, ValueError):
            unknown = []
        if unknown:
            known = sorted(_declared_keys(error.schema, error.instance, validator))
            return [f"{key_path(*path, k)}: unknown key ({_suggest(str(k), known)})" for k in unknown]
    if error.validator == "required":
        return [f"{key_path(*path, k)}: missing (required)" for k in error.validator_value if k not in error.instance]
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return [f"{key_path(*path) or 'config'}: {message}"]


def _declared_keys(subschema, instance, validator):
    """The keys a (sub)schema declares for ``instance``: through allOf, local $refs, and the
    if/then/else branch that applies (a VOC key is unknown in a synthetic dataset)."""
    keys = set(subschema.get("properties", {}))
    parts = list(subschema.get("allOf", []))
    if "if" in subschema:
        branch = "then" if validator.evolve(schema=subschema["if"]).is_valid(instance) else "else"
        parts += [subschema[branch]] if branch in subschema else []
    ref = subschema.get("$ref", "")
    if ref.startswith("#/"):
        target = validator.schema
        for name in ref[2:].split("/"):
            target = target[name]
        parts.append(target)
    for part in parts:
        keys |= _declared_keys(part, instance, validator)
    return keys


def _suggest(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"


def config_problems():
    """What the schema cannot check: names that refer to nothing, settings no run can satisfy.

    Needs the config validated (defaults filled in). Dataset paths are checked later, for the
    datasets the requested targets need (see `require_data`).
    """
    problems = _name_problems()
    if problems:  # a name with '/' or '..' would send the checks below (and the outputs) elsewhere
        return problems
    for name, p in config["pretrain"].items():
        if p["data"] not in config["classification_data"]:
            problems.append(f"pretrain.{name}.data = {p['data']!r} is not a classification_data entry"
                            f" (known: {', '.join(config['classification_data'])})")
    for name, d in config["detection_data"].items():
        n = d["synthetic"]["num_train"] if d["type"] == "synthetic" else None
        problems += _split_size_problems(f"detection_data.{name}.split.size", d["split"]["size"], n)
        if d["type"] == "voc" and Path(d["root"]).name != "VOCdevkit":
            problems.append(f"detection_data.{name}.root: {d['root']} must be the VOCdevkit folder"
                            " (holding VOC2007/, VOC2012/)")
    for name, d in config["classification_data"].items():
        problems += _split_size_problems(f"classification_data.{name}.holdout.size", d["holdout"]["size"], None)
    for name, e in config["experiments"].items():
        where = f"experiments.{name}"
        if e["data"] not in config["detection_data"]:
            problems.append(f"{where}.data = {e['data']!r} is not a detection_data entry"
                            f" (known: {', '.join(config['detection_data'])})")
        if e["pretrain"] not in config["pretrain"]:
            problems.append(f"{where}.pretrain = {e['pretrain']!r} is not a pretrain entry"
                            f" (known: {', '.join(config['pretrain'])})")
        else:
            problems += _flops_problems(f"{where}.search", e["search"], config["pretrain"][e["pretrain"]]["space"])
            problems += _latency_problems(name, f"{where}.search", e["search"],
                                          config["pretrain"][e["pretrain"]]["space"])
            problems += published_problems(name, e)
        s = e["search"]
        if s["parents"] > s["population"]:
            problems.append(f"{where}.search.parents: {s['parents']} is more than the population ({s['population']})")
        bred = (s["mutations"] or 0) + (s["crossovers"] or 0)
        if bred > s["population"]:
            problems.append(f"{where}.search.mutations: {s['mutations']} mutations and {s['crossovers']} crossovers "
                            f"are more than the population ({s['population']})")
    if config["demo_experiment"] not in config["experiments"]:
        problems.append(f"demo_experiment = {config['demo_experiment']!r} is not an experiment"
                        f" (known: {', '.join(config['experiments'])})")
    return problems


# An entry's name becomes a folder (results/<experiment>/, results/data/<dataset>/, ...): letters, digits,
# '_', '-' and '.', not starting with '.' (no '/', no '..'), the wildcards' own pattern.
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def _name_problems():
    problems = []
    for section in ("experiments", "detection_data", "classification_data", "pretrain"):
        for name in config.get(section, {}):
            if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
                problems.append(f"{section}.{name}: the name {name!r} cannot be a folder name: use letters, digits, "
                                f"'_', '-' and '.' (not first), no '/' or '..'")
    return problems


# The paper's fine-tuning schedule of an experiment that sets none, by detector and dataset (Sec. 4):
# COCO 90k iterations, lr /10 at 60k and 80k; VOC 22.5k, /10 at 15k and 20k; lr 0.02 for Faster
# R-CNN + FPN, 0.01 for RetinaNet; 500 warm-up iterations; weight decay 1e-4.
PAPER_ITERATIONS = {"coco": (90000, [60000, 80000]), "voc": (22500, [15000, 20000])}
PAPER_LR = {"faster_rcnn_fpn": 0.02, "retinanet": 0.01}


def apply_paper_defaults(config):
    """Give each experiment without `finetune.schedule` the paper's schedule for its detector and
    dataset (synthetic data counts as COCO). Runs before the schema fills in the other defaults."""
    for e in config.get("experiments", {}).values():
        finetune = e.setdefault("finetune", {})
        if not isinstance(finetune, dict) or "schedule" in finetune:
            continue
        data = config.get("detection_data", {}).get(e.get("data"), {})
        iterations, milestones = PAPER_ITERATIONS.get(data.get("type"), PAPER_ITERATIONS["coco"])
        lr = PAPER_LR.get((e.get("detector") or {}).get("name", "faster_rcnn_fpn"), PAPER_LR["faster_rcnn_fpn"])
        finetune["schedule"] = {"iterations": iterations, "lr": lr, "policy": "step", "milestones": milestones,
                                "warmup_iterations": 500, "warmup_factor": 0.001, "weight_decay": 1.0e-4}


def _split_size_problems(where, size, n):
    """A split size is a count (a whole number >= 1) or a fraction in (0, 1) (detnas.data.coco.part_count);
    ``n``: the number of images split, when known without the data (synthetic datasets)."""
    if size >= 1 and size != int(size):
        return [f"{where}: {size} is neither a count (a whole number) nor a fraction in (0, 1)"]
    if n is not None:
        k = int(size) if size >= 1 else round(size * n)
        if not 0 < k < n:
            return [f"{where}: {size} takes {k} of the {n} images: both parts must be non-empty"]
    return []


def _flops_problems(where, search, space):
    """The FLOPs bounds admit at least one architecture of the space (bounds in MACs / 1e6)."""
    lo, hi = space_bounds(space)
    low, high = search["min_mflops"], search["max_mflops"]
    # shown rounded inwards: a bound at the number shown admits an architecture
    span = f"space {space!r}: cheapest backbone {math.ceil(lo / 1e4) / 100} MFLOPs, dearest {math.floor(hi / 1e4) / 100}"
    problems = []
    if high is not None and high * 1e6 < lo:
        problems.append(f"{where}.max_mflops: {high} admits no architecture ({span})")
    if low is not None and low * 1e6 > hi:
        problems.append(f"{where}.min_mflops: {low} admits no architecture ({span})")
    elif low is not None and high is not None and low > high:
        problems.append(f"{where}.min_mflops: {low} is above max_mflops ({high})")
    return problems


def latency_settings(name):
    """The experiment's latency section with the schema's defaults (its input size: the detector's
    min_size unless given), or None when it has none and no search.max_latency_ms bound."""
    e = experiment(name)
    given = e.get("latency")
    if given is None and e["search"]["max_latency_ms"] is None:
        return None
    settings = {**_LATENCY_DEFAULTS, **(given or {})}
    if settings["input_size"] is None:
        settings["input_size"] = e["detector"]["min_size"]
    return settings


def _latency_schema_defaults():
    schema = yaml.safe_load((Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["experiments"]["additionalProperties"]["properties"]["latency"]["properties"]
    # x-default, not default: Snakemake's validate would fill defaults into a null section
    return {k: v.get("x-default") for k, v in props.items()}


_LATENCY_DEFAULTS = _latency_schema_defaults()


def _latency_problems(name, where, search, space):
    """search.max_latency_ms admits an architecture by the experiment's latency table, once the table
    is measured (results/<experiment>/latency/table.json: the bounds of detnas.latency.LatencyTable,
    read from its JSON without importing torch); before that, the search's first step checks the same
    and fails with the same line."""
    bound = search["max_latency_ms"]
    path = Path(f"{R}/{name}/latency/table.json")
    if bound is None or not path.exists():
        return []
    try:
        t = json.loads(path.read_text())
        rows = t["ms"]
        lo = t["scale"] * (t["stem_ms"] + sum(min(row) for row in rows) + t["tail_ms"])
        hi = t["scale"] * (t["stem_ms"] + sum(max(row) for row in rows) + t["tail_ms"])
    except (OSError, ValueError, KeyError, TypeError):
        return []  # a broken table is remeasured (or refused with its file named) by the jobs
    wanted = latency_settings(name)
    # a table of other settings is about to be measured again: nothing to check it against yet
    if t.get("space") != space or any(t.get(k) != wanted[k] for k in ("input_size", "batch_size", "threads")):
        return []
    if bound >= lo:
        return []
    return [f"{where}.max_latency_ms: {bound} admits no architecture (latency table {path}: fastest backbone "
            f"{math.ceil(lo * 1000) / 1000} ms, slowest {math.floor(hi * 1000) / 1000} ms on {t.get('device')}, "
            f"{t.get('threads')} thread(s), {t.get('input_size')} px, batch {t.get('batch_size')})"]


_BOUNDS_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detnas" / "space_bounds.json"


@cache
def space_bounds(name):
    """(cheapest, dearest) backbone MACs of a search space: detnas.flops' cost table.

    Building the table (torch modules on the meta device) takes seconds per space, and importing
    torch as long: the bounds are kept on disk, keyed by the space and the source of the modules
    that define it, so loading the Snakefile stays fast.
    """
    import detnas.space

    space = detnas.space.get_space(name)
    package = Path(detnas.space.__file__).parent
    digest = hashlib.sha256(repr(space).encode())
    for module in ("space", "blocks", "supernet", "flops"):
        digest.update((package / f"{module}.py").read_bytes())
    digest.update(version("torch").encode())
    key = digest.hexdigest()
    try:
        known = json.loads(_BOUNDS_CACHE.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        from detnas.flops import cost_table

        known[key] = list(cost_table(space).bounds())
        try:  # a cache: a read-only home only costs the recomputation
            _BOUNDS_CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = _BOUNDS_CACHE.with_name(f"{_BOUNDS_CACHE.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, _BOUNDS_CACHE)
        except OSError:
            pass
    return tuple(known[key])


def published_mflops(name):
    """(space, backbone MFLOPs) of a published architecture (detnas.archs), cached as space_bounds is."""
    import detnas.archs

    entry = detnas.archs.PUBLISHED[name]
    lo, _ = space_bounds(entry.space)  # the cache is keyed by the modules' source: reuse its validity
    key = f"published:{name}:{entry.space}:{entry.encoding}:{lo}"
    try:
        known = json.loads(_BOUNDS_CACHE.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        from detnas.flops import path_macs
        from detnas.space import get_space

        space = get_space(entry.space)
        known[key] = path_macs(space, space.parse(entry.encoding)) / 1e6
        try:
            tmp = _BOUNDS_CACHE.with_name(f"{_BOUNDS_CACHE.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, _BOUNDS_CACHE)
        except OSError:
            pass
    return entry.space, known[key]


def published_problem(where, experiment_name, name):
    """Why published architecture ``name`` cannot be a published_<name> method of the experiment (its
    space, its FLOPs against the search's bounds), or None."""
    e = config["experiments"][experiment_name]
    space = config["pretrain"][e["pretrain"]]["space"]
    arch_space, mflops = published_mflops(name)
    if arch_space != space:
        return (f"{where}: {name} is an architecture of space {arch_space!r}, the experiment searches space {space!r}; "
                f"list it under experiments.{experiment_name}.references to retrain it as a reference outside the budget")
    lo, hi = e["search"]["min_mflops"], e["search"]["max_mflops"]
    if (hi is not None and mflops > hi) or (lo is not None and mflops < lo):
        return (f"{where}: {name} has {mflops:.1f} backbone MFLOPs, outside the search's bounds "
                f"[{lo if lo is not None else 0}, {hi if hi is not None else 'inf'}] M; list it under "
                f"experiments.{experiment_name}.references to retrain it as a reference outside the budget")
    return None


def published_problems(experiment_name, e):
    out = []
    for i, name in enumerate(e.get("published") or []):
        problem = published_problem(f"experiments.{experiment_name}.published[{i}]", experiment_name, name)
        if problem:
            out.append(problem)
    return out


_warned = set()


def require_data(paths):
    """Dataset paths a requested target needs, as (key path, path): a run stops on the missing ones
    (one line each, before any job); a dry run (or --dag, --summary) plans on and warns, once per path.
    """
    missing = [(key, p) for key, p in paths if not os.path.exists(p)]
    # under a missing folder, everything is missing: name the folder only
    missing = [(key, p) for key, p in missing if not any(q != p and Path(q) in Path(p).parents for _, q in missing)]
    lines = [f"{key}: {p} does not exist" for key, p in missing]
    if executing():
        stop(lines)
    for line in lines:
        if line not in _warned:
            _warned.add(line)
            logger.warning(line)


def as_json(obj):
    """Settings as one JSON argument (sorted keys: the same settings give the same params)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def mlflow_run(mlflow_experiment, stage, run_name, wildcards, **tags):
    """The MLflow run of a job: its experiment, name and tags (PIPELINE.md's tag set)."""
    tags = {"stage": stage, "wildcards": as_json(dict(wildcards.items())), **tags}
    return as_json({"experiment": mlflow_experiment, "run_name": run_name, "tags": tags})


# -- paths -----------------------------------------------------------------------------------------

def det_dir(dataset):
    return f"{R}/data/detection/{dataset}"


def cls_dir(dataset):
    return f"{R}/data/classification/{dataset}"


def pretrain_dir(name):
    return f"{R}/pretrain/{name}"


def demo_targets():
    """The demo experiment's results: the comparison, the search curves (Fig. 2), the ranking quality
    and the architecture patterns (Fig. 4)."""
    e = f"{R}/{config['demo_experiment']}"
    return [f"{e}/comparison.csv", f"{e}/search_curves.png", f"{e}/ranking.json", f"{e}/architectures.png"]


def unknown_method_input(w):
    """`results/{experiment}/{method}/final.json` for a method no rule makes: say which exist."""
    target = f"{R}/{w.experiment}/{w.method}/final.json"
    if w.experiment not in config["experiments"]:
        stop([f"{target}: unknown experiment {w.experiment!r} (experiments: {', '.join(config['experiments'])})"])
    if w.method == "detnas":
        stop([f"{target}: DetNAS's result is {R}/{w.experiment}/final.json"])
    stop([f"{target}: unknown method {w.method!r} (methods: {', '.join(METHODS + EXTRA_METHODS + TRAINING_FREE)}, "
          f"published_<name> or reference_<name> of a published architecture)"])
