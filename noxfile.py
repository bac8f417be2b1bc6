"""nox sessions: the two set-up commands of the README (`nox -s ablate`, `nox -s tests`) and
the rest of the tool belt. Each session installs the project into its own virtualenv (pip)."""

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

DEFAULT_SPEC = "ablations/seed_timeline.toml"


def _install(session, extras="dev"):
    session.install("-e", f".[{extras}]")


def _ablate_each(session, *specs):
    """Install, then run each ablation spec with the session's arguments."""
    _install(session)
    for spec in specs:
        session.run("python", "-m", "harness", "ablate", spec, *session.posargs)


# The suite runs on two pytest-xdist workers (up to 4 where there are more cores) with
# OpenMP's threads sleeping, not spinning, while they wait: many tests start harness children
# that each run torch on two threads, and beside a second worker spinning threads took turns
# with each other (2 cores: 1328 s on two workers with the default wait policy, 1158 s on
# one, 664 s on two with OMP_WAIT_POLICY=PASSIVE; 2026-12-07). Pass `-n 0` to run serially.
TEST_WORKERS = min(os.cpu_count() or 1, 4)


@nox.session
def tests(session):
    """The test suite (CPU, deterministic; what CI runs)."""
    _install(session)
    workers = ["-n", str(TEST_WORKERS)] if TEST_WORKERS > 1 else []
    session.run("pytest", "-q", *workers, *session.posargs,
                env={"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"})


@nox.session
def ablate(session):
    """Run an ablation spec (default: the seed timeline on the micro models) on this machine
    and write its report to runs/<spec name>/ (the committed reference results stay in
    results/ and are shown beside). Arguments after `--` go to the harness, e.g.
    `nox -s ablate -- ablations/one_at_a_time.toml --device cuda`."""
    _install(session)
    args = list(session.posargs)
    if not args or args[0].startswith("-"):
        args.insert(0, DEFAULT_SPEC)
    session.run("python", "-m", "harness", "ablate", *args)


@nox.session
def report(session):
    """Rebuild reports from the recorded tables (every report folder below results/, at
    any depth, and its index; or the folders given)."""
    _install(session)
    import glob

    folders = session.posargs or sorted(p.rsplit("/", 1)[0] for p in
                                        glob.glob("results/**/design.json", recursive=True))
    index = [] if session.posargs else ["--index", "results"]
    session.run("python", "-m", "harness", "report", *folders, *index)


@nox.session
def compare(session):
    """Compare two results of one design, B against A (`python -m harness compare`): B/A
    ratios with intervals and verdicts, e.g. `nox -s compare -- runs/before runs/after
    --fail-slower 5%` (exits 1 when B is slower by more than 5%)."""
    _install(session)
    if len(session.posargs) < 2:
        session.error("give two results: nox -s compare -- A B [--fail-slower 5%] [--out F.md]")
    session.run("python", "-m", "harness", "compare", *session.posargs)


@nox.session
def parity(session):
    """Parity tables of every flag on the micro models (python -m harness parity), to
    runs/parity/<model>/ (the committed ones: results/<machine>/parity/)."""
    _install(session)
    args = session.posargs or ["--model", "ivit_micro,swin_micro", "--out", "runs/parity"]
    session.run("python", "-m", "harness", "parity", *args)


@nox.session
def bench(session):
    """pytest-benchmark microbenchmarks of each module flag's hot op, both paths."""
    _install(session)
    session.run("pytest", "-q", "-m", "bench", "--benchmark-enable", "--benchmark-only",
                "--benchmark-group-by=param:flag", *session.posargs, "tests/bench")


@nox.session
def speed(session):
    """The training step's speed in one command: legacy / seed / best / float, step-
    interleaved (5 sessions x 6 rounds, A/A control, t intervals), on the micro models
    (batch 64) and on DeiT-tiny and Swin-T at 224 (batch 4); reports in runs/speed_micro
    and runs/speed_224. Arguments go to both runs, e.g. `-- --malloc-retain`."""
    _ablate_each(session, "ablations/speed_micro.toml", "ablations/speed_224.toml")


@nox.session
def speed_compiled(session):
    """The training step under compile_model: seed / best eager, best compiled (qvit_inductor,
    bitwise eager), float eager and compiled (plain inductor), step-interleaved, on the micro
    models and at 224; reports in runs/speed_compiled_micro and runs/speed_compiled_224. Cold
    inductor caches add minutes of compilation per model to the first session."""
    _ablate_each(session, "ablations/speed_compiled_micro.toml",
                 "ablations/speed_compiled_224.toml")


@nox.session
def mutants(session):
    """The curated mutation check: subtle mutations of qvit/ (rounding modes, bit widths
    and clamps, cache keys, momentum order, scale shapes, gradient order, the lean nodes,
    the flags' dependency declarations, and I-ViT's constants from
    scripts/mutants_ivit_constants.py, which scripts/mutants.py appends),
    each applied in a scratch copy with the tests that must catch it; fails if any survives.
    Not in `tests` (it reruns test subsets per mutant). Arguments go to scripts/mutants.py
    (-k NAME, --jobs N; default --jobs 2: two mutants at once, one core each)."""
    _install(session)
    session.run("python", "scripts/mutants.py", *(session.posargs or ["--jobs", "2"]),
                env={"OMP_NUM_THREADS": "1"})


@nox.session
def lint(session):
    """ruff over the code."""
    session.install("ruff")
    session.run("ruff", "check", "qvit", "harness", "tests", "noxfile.py")


@nox.session
def slurm(session):
    """Start a single-node Slurm cluster on this machine and run the real Slurm tests."""
    _install(session)
    session.run("bash", "scripts/slurm_local.sh", "start", external=True)
    session.run("pytest", "-q", "-m", "slurm", "tests/harness/sweep/test_slurm_real.py",
                *session.posargs, env={"QVIT_REAL_SLURM": "1"})


@nox.session
def deploy(session):
    """Inference speed of the deployed integer models (qvit.deploy): deployed eager and
    compiled vs the QAT eval (best) vs the float twin, interleaved rounds, images/s with
    t intervals, on the micro models (batch 64) and DeiT-tiny / Swin-T at 224 (batch 8);
    report in runs/deploy. Arguments go to scripts/deploy_speed.py."""
    _install(session)
    session.run("python", "scripts/deploy_speed.py", "--out", "runs/deploy", *session.posargs,
                env={"OMP_NUM_THREADS": session.env.get("OMP_NUM_THREADS", "2")})
