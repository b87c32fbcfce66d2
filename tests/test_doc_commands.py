"""Every command in README.md and docs/*.md runs in a test, or is listed here as not run in CI.

The shell commands of the docs (fenced `bash`/`shell` blocks, untagged blocks'
command lines, and inline `python ...` / `noisy-student ...` spans) are read
from the docs themselves. Each one is either run by a test of this file (the
doc's own text, with only its paths replaced by temporary ones and size
flags appended: fewer steps, smaller models, a handful of images), mapped to
the existing test that runs it, or listed in NOT_RUN_IN_CI with the reason,
and then the doc says "not run in CI" beside it. A command a doc gains, or
changes, fails `test_every_documented_command_is_run_or_listed` until it is
placed in one of the three tables.

The runs chain the project's own artifacts: records from
tools/make_records.py, teachers and SavedModels from the loop, official
checkpoints converted by tools/convert_checkpoint.py. Each run test is one
bash script in one subprocess (several commands, in the docs' order).
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
from conftest import REPO, script_env

# --- the commands of the docs ------------------------------------------------

DOCS = ("README.md", *sorted(os.path.join("docs", f) for f in os.listdir(f"{REPO}/docs")))
DOCS = tuple(d for d in DOCS if d.endswith(".md"))
# First words of a shell command (after VAR=value prefixes): what an inline span
# or an untagged block's line must start with to count as a command.
PROGRAMS = ("python", "pip", "pytest", "saved_model_cli", "docker", "mkdir", "cp", "wget", "tar")
_ENV_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")
_FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.S | re.M)
_INLINE = re.compile(r"`([^`]+)`")


def _is_command(text: str) -> bool:
    word = _ENV_PREFIX.sub("", text).split(" ", 1)[0]
    return word in PROGRAMS or word.startswith("noisy-student")


def _strip_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _block_commands(block: str):
    """A shell block's commands, as bash reads them: `\\`-newline removed,
    comments dropped, a quoted string may span lines, `&&` separates, and
    `X="..."` assignments expanded in the commands after them."""
    variables, pending = {}, ""
    for line in block.replace("\\\n", "").splitlines():
        pending = f"{pending}\n{line}" if pending else line.strip()
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        command, pending = _strip_comment(pending), ""
        assignment = re.fullmatch(r'([A-Z])="(.*)"', command)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        for name, value in variables.items():
            command = command.replace(f"${name}", value)
        yield from (part.strip() for part in command.split(" && ") if part.strip())


def documented_commands() -> dict[str, tuple[str, str]]:
    """{command, whitespace collapsed: (the doc it is in, its text)}, in doc order."""
    found = {}
    for doc in DOCS:
        with open(os.path.join(REPO, doc)) as f:
            text = f.read()
        for m in _FENCE.finditer(text):
            if m.group(1) not in ("bash", "shell", "sh", ""):
                continue
            for command in _block_commands(m.group(2)):
                if m.group(1) or _is_command(command):  # untagged blocks also hold output
                    found.setdefault(" ".join(command.split()), (doc, command))
        for m in _INLINE.finditer(_FENCE.sub("\n", text)):
            command = " ".join(m.group(1).split())
            if _is_command(command):
                found.setdefault(command, (doc, command))
    return found


def doc_command(command: str) -> str:
    """The doc's text of `command` (as `documented_commands` keys it): a run below runs
    the doc's own text, its newlines inside quotes kept."""
    assert command in documented_commands(), f"no doc holds {command!r}"
    return documented_commands()[command][1]


# --- where each command runs ---------------------------------------------------

# Commands run by the tests of this file: command -> test.
DIGITS_DEFAULT = (
    "python experiments/noisy_student.py --config.train.teacher_epochs=150 "
    "--config.train.student_epochs=150 --config.num_iterations=1 --workdir=/tmp/ev/digits150"
)
EXPORT_TEACHER = (
    'python -c "from noisy_student_tf.evaluation import export_saved_model '
    "from noisy_student_tf.models import load_checkpoint w = '/tmp/ev/digits150/' "
    "export_saved_model(load_checkpoint(w + 'iteration_0_teacher.keras'), "
    "w + 'teacher_saved_model')\""
)
EVALUATE_TWO = (
    "python tools/evaluate.py --model=/tmp/ev/digits150/teacher_saved_model,"
    "/tmp/ev/digits150/saved_model --names=teacher,student1 "
    "--baseline=/tmp/ev/digits150/teacher_saved_model --data=/tmp/ev/digits_test "
    "--output_dir=/tmp/ev/digits150_eval"
)
EVALUATE_ONE = (
    "python tools/evaluate.py --model=WORKDIR/saved_model --data=/data/digits_test "
    "--output_dir=/tmp/eval"
)
SEED_RUN = (
    "python experiments/noisy_student.py --config.seed=S --config.deterministic=True "
    "--workdir=runs/seedS"
)
ROBUSTNESS_RUN = (
    "python experiments/noisy_student.py --config.evaluate.robustness=True "
    "--workdir=runs/digits_robustness"
)
TFDS_RECORDS = (
    "python tools/make_records.py --input=tfds:cifar10:train --output_dir=/data/src --num_shards=16"
)
TEST_RECORDS = (
    "python tools/make_records.py --input=/data/in1k/val --output_dir=/data/rec/test "
    "--num_shards=64 --prefix=test --class_map=/data/rec/train/class_map.json"
)
CIFAR_DEFAULT = (
    "python experiments/noisy_student.py --config=experiments/configs/cifar10_4k.py "
    "--config.data.path=../shared/data/cifar10"
)
EVALUATE_CIFAR = (
    "python tools/evaluate.py --model=runs/cifar10_4k_cpu/saved_model "
    '--data="../shared/data/cifar10/test-*" --output_dir=runs/eval'
)
TRAIN_RECORDS = (
    "python tools/make_records.py --input=/data/in1k/train --output_dir=/data/rec/train "
    "--num_shards=1024"
)
POOL_RECORDS = (
    "python tools/make_records.py --input=/data/pool_images --output_dir=/data/rec/pool "
    "--num_shards=4096 --prefix=pool"
)
B0_LOOP = (
    "python experiments/noisy_student.py --config=experiments/configs/imagenet.py:b0 "
    "--config.data.labeled=/data/rec/train --config.data.unlabeled=/data/rec/pool "
    "--config.data.test=/data/rec/test --workdir=runs/at_scale"
)
B0_LABEL = (
    "python tools/label.py --input=/data/rec/pool --output_dir=/work/labeled "
    "--teacher=runs/at_scale/iteration_0_teacher.keras"
)
B0_FILTER = (
    "python tools/filter_balance.py --input=/work/labeled --output_dir=/work/pseudo "
    "--threshold=0.3 --images_per_class=130000 --num_output_shards=1024"
)
B0_STUDENT = (
    "python experiments/noisy_student.py --config=experiments/configs/imagenet.py:b0 "
    "--config.data.labeled=/data/rec/train --config.data.test=/data/rec/test "
    "--config.data.unlabeled= --config.data.pseudo_labeled=/work/pseudo "
    "--config.num_iterations=1 --workdir=runs/student"
)
B0_RELABEL = (
    "python tools/label.py --input=/data/rec/pool --output_dir=/work/labeled_2 "
    "--teacher=runs/student/saved_model"
)
OFFICIAL_LABEL = (
    "python tools/label.py --teacher=/path/to/noisy_student_efficientnet-b0 "
    "--input=... --output_dir=..."
)
OFFICIAL_LOOP = (
    "python experiments/noisy_student.py --config=/path/to/your_imagenet_config.py "
    "--config.teacher_checkpoint=/path/to/noisy_student_efficientnet-b0 --workdir=..."
)
CONVERT = (
    "python tools/convert_checkpoint.py --checkpoint=/path/to/noisy_student_efficientnet-b0 "
    "--output_dir=keras_weights"
)
README_LABEL_OFFICIAL = "python tools/label.py --teacher=/path/to/noisy_student_efficientnet-b0 ..."
README_CONVERT = (
    "python tools/convert_checkpoint.py --checkpoint=/path/to/noisy_student_efficientnet-b0 "
    "--output_dir=out"
)
CIFAR_CPU = "--config=experiments/configs/cifar10_4k.py:cpu"
TEACHER_0 = "--config.teacher_checkpoint=runs/cifar10_4k_cpu/iteration_0_teacher.keras"
STUDENT_1 = "--config.teacher_checkpoint=runs/cifar10_4k_cpu/iteration_1_student.keras"
ABLATIONS = {  # results.md: name -> the command's flags after `python experiments/noisy_student.py`
    "student2_ratio4": f"{CIFAR_CPU} {STUDENT_1} --config.num_iterations=1 "
    "--config.pseudo.unlabeled_ratio=4 --workdir=runs/student2_ratio4",
    "student2_103ep": f"{CIFAR_CPU} {STUDENT_1} --config.num_iterations=1 "
    "--config.train.student_epochs=103 --workdir=runs/student2_ratio2_103ep",
    "no_randaugment": f"{CIFAR_CPU} {TEACHER_0} --config.num_iterations=1 "
    "--workdir=runs/abl_no_randaugment --config.student.randaugment_magnitude=0",
    "no_noise": f"{CIFAR_CPU} {TEACHER_0} --config.num_iterations=1 --workdir=runs/abl_no_noise "
    "--config.student.randaugment_magnitude=0 --config.student.dropout_rate=0.0 "
    "--config.student.final_survival_prob=1.0",
    "hard": f"{CIFAR_CPU} {TEACHER_0} --config.num_iterations=1 --workdir=runs/abl_hard "
    "--config.pseudo.soft=False",
    "no_filter_balance": f"{CIFAR_CPU} {TEACHER_0} --config.num_iterations=1 "
    "--workdir=runs/abl_no_filter_balance --config.pseudo.threshold=0.0 "
    "--config.pseudo.images_per_class=0",
    "ra_official": f"{CIFAR_CPU} {TEACHER_0} --config.num_iterations=1 "
    "--workdir=runs/abl_ra_official --config.student.randaugment_variant=official",
}
# The runs below take 2.5-5 minutes each on two busy cores.

BENCHMARKS = {  # documented benchmark command -> the size flags its run here appends
    "python benchmarks/ema_overhead.py": "--steps=1 --warmup=1 --batch_size=2 --ratio=1",
    "python benchmarks/train_step.py --quick": "--batch_size=2 --ratio=1 --mirrored=false",
    "python benchmarks/model_table.py": "efficientnet-b0",
    "python benchmarks/trace_time.py": "--quick --batch_size=2",
    "python benchmarks/labeling.py": "--image_size=32 --num_images=8 --label_classes=4 "
    "--batch_size=4 --rounds=1 --num_records=64 --num_classes=4 --num_files=2 --beam_workers=0",
    "python benchmarks/scale.py": "--num_records=64 --records_per_shard=32 --distinct_images=8 "
    "--batch_size=4 --unlabeled_ratio=1 --label_batch_size=32",
    "python benchmarks/randaugment.py": "--data_dir=CIFAR --sizes=32 --rounds=1 "
    "--min_seconds=0.05 --max_images=16 --batch_size=4",
    "python benchmarks/randaugment.py --methods=project_batch,project_batch_key --sizes=32,224 "
    "--rounds=1 --min_seconds=10 --in_memory=256 --paired": "--data_dir=CIFAR --sizes=32 "
    "--min_seconds=0.05 --in_memory=8 --batch_size=4",
    "python benchmarks/plot_randaugment.py": "--data_dir=CIFAR --num_images=1 --output=OUT/ra.png",
    "python benchmarks/plot_randaugment.py --variants": "--data_dir=CIFAR --num_images=1 "
    "--output=OUT/ra_variants.png",
}
# Documented variants of a benchmark run above that differ only in sizes or counts.
SAME_RUN_AS = {
    "python benchmarks/scale.py --num_records=100000": "python benchmarks/scale.py",
    "python benchmarks/randaugment.py --methods=project_batch,project_batch_key --sizes=224 "
    "--batch_size=16 --rounds=1 --min_seconds=15 --in_memory=256 --paired": (
        "python benchmarks/randaugment.py --methods=project_batch,project_batch_key "
        "--sizes=32,224 --rounds=1 --min_seconds=10 --in_memory=256 --paired"
    ),
}

RUN_HERE = {
    DIGITS_DEFAULT: "test_digits_default_config_and_the_evaluation_recipe",
    # The same command as DIGITS_DEFAULT once its sizes are set (the default config).
    "python experiments/noisy_student.py": "test_digits_default_config_and_the_evaluation_recipe",
    EXPORT_TEACHER: "test_digits_default_config_and_the_evaluation_recipe",
    EVALUATE_TWO: "test_digits_default_config_and_the_evaluation_recipe",
    EVALUATE_ONE: "test_digits_default_config_and_the_evaluation_recipe",
    SEED_RUN: "test_digits_default_config_and_the_evaluation_recipe",
    ROBUSTNESS_RUN: "test_digits_default_config_and_the_evaluation_recipe",
    TFDS_RECORDS: "test_cifar10_configs_on_records_the_tools_wrote",
    TEST_RECORDS: "test_cifar10_configs_on_records_the_tools_wrote",
    CIFAR_DEFAULT: "test_cifar10_configs_on_records_the_tools_wrote",
    EVALUATE_CIFAR: "test_cifar10_configs_on_records_the_tools_wrote",
    TRAIN_RECORDS: "test_imagenet_b0_recipe_step_by_step",
    POOL_RECORDS: "test_imagenet_b0_recipe_step_by_step",
    B0_LOOP: "test_imagenet_b0_recipe_step_by_step",
    B0_LABEL: "test_imagenet_b0_recipe_step_by_step",
    B0_FILTER: "test_imagenet_b0_recipe_step_by_step",
    B0_STUDENT: "test_imagenet_b0_recipe_step_by_step",
    B0_RELABEL: "test_imagenet_b0_recipe_step_by_step",
    OFFICIAL_LABEL: "test_official_and_keras_applications_teachers_through_the_loop",
    OFFICIAL_LOOP: "test_official_and_keras_applications_teachers_through_the_loop",
    CONVERT: "test_official_and_keras_applications_teachers_through_the_loop",
    README_LABEL_OFFICIAL: "test_official_and_keras_applications_teachers_through_the_loop",
    README_CONVERT: "test_official_and_keras_applications_teachers_through_the_loop",
    "python tools/make_records.py": "test_cifar10_configs_on_records_the_tools_wrote",
    **{
        f"python experiments/noisy_student.py {flags}": "test_ablations_resolve_validate_build_step"
        for flags in ABLATIONS.values()
    },
    **{c: "test_every_benchmark_runs_at_a_small_size" for c in [*BENCHMARKS, *SAME_RUN_AS]},
}

# Commands another test file runs (as written but for paths and sizes).
ELSEWHERE = {
    "pip install .": "tests/test_installed_wheel.py::test_the_commands_come_from_the_wheel",
    "python benchmarks/train_records.py": (
        "tests/test_benchmarks.py::test_train_records_comparison_runs_quick"
    ),
    "noisy-student": "tests/test_installed_wheel.py::test_the_smoke_loop_ran_on_the_packaged_config",
    "noisy-student --config=digits:smoke --workdir=runs/smoke": (
        "tests/test_installed_wheel.py::test_the_smoke_loop_ran_on_the_packaged_config"
    ),
    "noisy-student --config=cifar10_4k:cpu --workdir=runs/cifar10_4k_cpu": (
        "tests/test_cifar_cpu.py::test_cifar10_cpu_recipe_and_its_report"
    ),
    "python experiments/noisy_student.py --config=experiments/configs/digits.py:smoke "
    "--workdir=runs/smoke": "tests/conftest.py::smoke_run",
    "NOISY_STUDENT_LOGICAL_CPUS=2 python experiments/noisy_student.py "
    "--config=experiments/configs/digits.py:smoke --config.strategy=mirrored "
    "--config.train.batch_size=24": "tests/test_strategy.py::test_mirrored_smoke_loop_on_two_logical_cpus",
    "python experiments/noisy_student.py --config=experiments/configs/cifar10_4k.py:cpu "
    "--workdir=runs/cifar10_4k_cpu": "tests/test_cifar_cpu.py::test_cifar10_cpu_recipe_and_its_report",
    "python experiments/report.py --runs=cpu=runs/cifar10_4k_cpu --output_dir=docs/img/cifar10_4k": (
        "tests/test_cifar_cpu.py::test_cifar10_cpu_recipe_and_its_report"
    ),
    "python experiments/report.py --runs=full=runs/cifar10_4k_cpu --output_dir=docs/img/cifar10_4k": (
        "tests/test_cifar_cpu.py::test_cifar10_cpu_recipe_and_its_report"
    ),
    **{
        f"python experiments/noisy_student.py {CIFAR_CPU} --config.seed={seed} "
        f"--config.num_iterations=1 --workdir=runs/cifar10_4k_cpu_s{seed}": (
            "tests/test_cifar_cpu.py::test_cifar10_cpu_recipe_and_its_report"
        )
        for seed in (1, 2)
    },
    "python experiments/report.py --seed_runs=runs/cifar10_4k_cpu,runs/cifar10_4k_cpu_s1,"
    "runs/cifar10_4k_cpu_s2": "tests/test_report.py::test_report_tables_and_plots_from_a_smoke_run",
    "python experiments/report.py --runs=full=runs/cifar10_4k_cpu,no_randaugment=runs/"
    "abl_no_randaugment,no_noise=runs/abl_no_noise,hard=runs/abl_hard,no_filter_balance=runs/"
    "abl_no_filter_balance,ra_official=runs/abl_ra_official,student2_ratio4=runs/student2_ratio4,"
    "student2_103ep=runs/student2_ratio2_103ep --output_dir=runs/ablations": (
        "tests/test_report.py::test_report_tables_and_plots_from_a_smoke_run"
    ),
    "python tools/label.py --input=/data/src --output_dir=/data/labeled "
    "--teacher=runs/noisy_student/iteration_0_teacher.keras --soft --temperature=1": (
        "tests/test_tools_cli.py::test_make_records_label_filter_balance_with_a_loop_checkpoint"
    ),
    "python tools/filter_balance.py --input=/data/labeled --output_dir=/data/pseudo "
    "--threshold=0.3 --images_per_class=130000 --num_output_shards=64 --seed=0": (
        "tests/test_tools_cli.py::test_make_records_label_filter_balance_with_a_loop_checkpoint"
    ),
    "pip wheel --no-deps -w dist .": "tests/test_installed_wheel.py::test_the_commands_come_from_the_wheel",
    "saved_model_cli show --all --dir exported/noisy_student": (
        "tests/test_export.py::test_saved_model_cli_lists_signatures_and_runs_the_documented_command"
    ),
    "python -c \"import numpy as np; np.save('images.npy', np.array([open('cat.jpg', 'rb').read()], "
    'dtype=object))"': (
        "tests/test_export.py::test_saved_model_cli_lists_signatures_and_runs_the_documented_command"
    ),
    "saved_model_cli run --dir exported/noisy_student --tag_set serve "
    "--signature_def serving_default --inputs image_bytes=images.npy": (
        "tests/test_export.py::test_saved_model_cli_lists_signatures_and_runs_the_documented_command"
    ),
    "mkdir -p models/noisy_student": (
        "tests/test_serving_rest.py::test_rest_predict_on_the_documented_model_folder"
    ),
    "cp -r exported/noisy_student models/noisy_student/1": (
        "tests/test_serving_rest.py::test_rest_predict_on_the_documented_model_folder"
    ),
    # The commands by name: the wheel's console scripts each print their version, and
    # the tools chain runs on the installed commands.
    **{
        name: "tests/test_installed_wheel.py::test_every_command_prints_the_version"
        for name in (
            "noisy-student-make-records",
            "noisy-student-label",
            "noisy-student-filter-balance",
            "noisy-student-evaluate",
            "noisy-student-convert",
            "python -m noisy_student_tf",
        )
    },
    "saved_model_cli": (
        "tests/test_export.py::test_saved_model_cli_lists_signatures_and_runs_the_documented_command"
    ),
    # Its 1- and 2-worker Beam runs: the DirectRunner multi_processing pipelines that
    # tests/test_beam_workers.py runs (the benchmark itself runs above with 0 workers).
    "python benchmarks/labeling.py --beam_workers=2": "tests/test_beam_workers.py",
    # CI's own commands (.ci/run runs them before and as the suite).
    'pip install -e ".[dev]"': ".ci/run",
    "pytest": ".ci/run",
}

NOT_RUN_IN_CI = {
    "wget https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/"
    "noisy_student_efficientnet-b0.tar.gz": "a download (no network at test time); the "
    "official checkpoint's format is written by the test instead",
    "tar xzf noisy_student_efficientnet-b0.tar.gz": "unpacks the download above",
    "python tools/label.py --input=gs://B/src --output_dir=gs://B/labeled "
    "--teacher=gs://B/teacher.keras --topk=10 --engine=beam --runner=DataflowRunner -- "
    "--project=P --region=R --temp_location=gs://B/tmp "
    "--extra_package=dist/noisy_student_tf-0.1.0-py3-none-any.whl "
    "--requirements_file=requirements.txt --max_num_workers=50 --machine_type=n2-highmem-8": (
        "Dataflow runner (a cloud project); the Beam engine runs on this machine's runner in "
        "tests/test_beam_label.py"
    ),
    "python tools/filter_balance.py --input=gs://B/labeled --output_dir=gs://B/pseudo "
    "--images_per_class=130000 --num_output_shards=1024 -- --runner=DataflowRunner "
    "--project=P --region=R --temp_location=gs://B/tmp "
    "--extra_package=dist/noisy_student_tf-0.1.0-py3-none-any.whl "
    "--requirements_file=requirements.txt": (
        "Dataflow runner (a cloud project); the pipeline runs locally in tests/test_filter_balance.py"
    ),
    "python tools/filter_balance.py --input=... --output_dir=gs://... -- "
    "--runner=DataflowRunner --project=...": "Dataflow runner (a cloud project)",
    "pip install tensorflow-serving-api": "a package install (network); the gRPC request test "
    "in tests/test_export.py runs where it is installed",
    'docker run -p 8500:8500 -p 8501:8501 --mount type=bind,source="$PWD/models/noisy_student",'
    "target=/models/noisy_student -e MODEL_NAME=noisy_student tensorflow/serving": (
        "needs docker and the tensorflow/serving image; tests/test_serving_rest.py serves the "
        "same folder over the same REST API from Python"
    ),
}


def test_every_documented_command_is_run_or_listed():
    documented = documented_commands()
    tables = {**RUN_HERE, **ELSEWHERE, **NOT_RUN_IN_CI}
    assert len(tables) == len(RUN_HERE) + len(ELSEWHERE) + len(NOT_RUN_IN_CI), "a command twice"
    new = [f"{doc}: {c}" for c, (doc, _) in documented.items() if c not in tables]
    assert not new, "documented but neither run nor listed:\n" + "\n".join(new)
    stale = [c for c in tables if c not in documented]
    assert not stale, "listed but in no doc:\n" + "\n".join(stale)


def test_the_tests_named_for_the_commands_exist():
    here = {name for name in globals() if name.startswith("test_")}
    assert set(RUN_HERE.values()) <= here
    for where in set(ELSEWHERE.values()):
        path, _, name = where.partition("::")
        with open(os.path.join(REPO, path)) as f:
            text = f.read()
        assert not name or re.search(rf"^def {name}\(", text, re.M), where


def test_commands_not_run_in_ci_say_so_in_their_doc():
    """Each such command's block (or its line, inline) carries "not run in CI"."""
    for command in NOT_RUN_IN_CI:
        doc = documented_commands()[command][0]
        with open(os.path.join(REPO, doc)) as f:
            text = f.read()
        places = [m.group(0) for m in _FENCE.finditer(text)]
        places += [line for line in text.splitlines() if "`" in line]
        holders = [
            p for p in places if command in " ".join(_strip_comment(p).replace("\\\n", "").split())
        ]
        holders = holders or [p for p in places if command.split(" --")[0] in " ".join(p.split())]
        assert any("not run in CI" in p for p in holders), f"{doc}: {command}"


def test_extraction_reads_blocks_as_bash_does():
    block = 'C="--a=1"\npython x.py $C \\\n    --b=2  # why\n# a comment\npip install . && pytest\n'
    assert list(_block_commands(block)) == [
        "python x.py --a=1     --b=2",
        "pip install .",
        "pytest",
    ]
    quoted = 'python -c "import os\nprint(1)"\n'
    assert list(_block_commands(quoted)) == ['python -c "import os\nprint(1)"']


# --- the runs -----------------------------------------------------------------


def run_commands(commands: list[str], tmp_path, timeout: float = 1800):
    """Runs shell commands in order in one bash process from the repository root.

    `python` and `saved_model_cli` are the running interpreter's; the first
    failing command stops the script, and its output is in the assertion.
    """
    env = script_env(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    script = "set -euo pipefail\n" + "\n".join(
        f'echo "+ {i} at $SECONDS s"\n{c}' for i, c in enumerate(commands)
    )
    (tmp_path / "commands.sh").write_text(script)
    proc = subprocess.run(
        ["bash", str(tmp_path / "commands.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    print(*(line for line in proc.stdout.splitlines() if line.startswith("+ ")), sep="\n")
    return proc


def sized(command: str, paths: dict, *flags: str) -> str:
    """A doc command with its paths replaced (longest first) and size flags appended."""
    command = doc_command(command)
    for old in sorted(paths, key=len, reverse=True):
        command = command.replace(old, str(paths[old]))
    return " ".join([command, *map(shlex.quote, flags)])


# A two-step teacher, one step per epoch: the plumbing, not the accuracy.
DIGITS_SIZES = (
    "--config.train.teacher_epochs=1",
    "--config.train.student_epochs=1",
    "--config.train.steps_per_epoch=2",
    "--config.pseudo.threshold=0.0",  # a 2-step teacher is not confident yet
    "--config.verbose=0",
    *(
        f"--config.{m}.{k}_coefficient=0.1"
        for m in ("teacher", "student")
        for k in ("width", "depth")
    ),
)
# tools/evaluate.py's grids at their smallest, where its default flags run elsewhere.
SMALL_GRIDS = (
    "--corruptions=gaussian_noise",
    "--severities=1",
    "--perturbations=translate",
    "--frames=2",
    "--eps=2",
    "--pgd_steps=1",
)
LOOP_SMALL_GRIDS = (
    "--config.evaluate.sample=4",
    "--config.evaluate.corruptions=('gaussian_noise',)",
    "--config.evaluate.severities=(1,)",
    "--config.evaluate.eps=(2,)",
    "--config.evaluate.pgd_steps=1",
)


def _write_digits_test(folder) -> None:
    """Test shards of 3 digits (a setup step the docs leave to the reader), written here."""
    from noisy_student_tf.data import ingest, schema
    from noisy_student_tf.data.sources import load_digits

    data = load_digits(5, 36, 32, 0)
    pairs = zip(data.test_images[:3], data.test_labels[:3], strict=True)
    items = ((schema.encode_png(x), int(y), f"test/{i}".encode()) for i, (x, y) in enumerate(pairs))
    ingest.write_source_shards(items, str(folder), 1, "test", [str(c) for c in range(10)])


def test_digits_default_config_and_the_evaluation_recipe(tmp_path):
    """The default config (fewer steps) and docs/evaluation.md's recipe, in its order;
    then the seed and robustness commands of docs/results.md, teacher only."""
    ev = tmp_path / "ev"
    paths = {"/tmp/ev": ev, "WORKDIR": ev / "digits150", "/data/digits_test": ev / "digits_test"}
    paths |= {"/tmp/eval": tmp_path / "eval", "runs/": f"{tmp_path}/", "=S": "=1", "seedS": "seed1"}
    teacher_only = ("--config.num_iterations=0",)
    _write_digits_test(ev / "digits_test")
    run_commands(
        [
            sized(DIGITS_DEFAULT, paths, *DIGITS_SIZES),
            sized(EXPORT_TEACHER, paths),
            sized(EVALUATE_TWO, paths, *SMALL_GRIDS),
            sized(EVALUATE_ONE, paths),  # the tool's default flags and grids, on 3 images
            sized(SEED_RUN, paths, *DIGITS_SIZES, *teacher_only),
            # The report of the teacher the first run wrote (loaded: no second training).
            sized(
                ROBUSTNESS_RUN,
                paths,
                *DIGITS_SIZES,
                *teacher_only,
                *LOOP_SMALL_GRIDS,
                f"--config.teacher_checkpoint={ev / 'digits150' / 'iteration_0_teacher.keras'}",
            ),
        ],
        tmp_path,
    )
    results = json.loads((ev / "digits150" / "results.json").read_text())
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]
    assert results["config"]["pseudo"]["images_per_class"] == 130  # the default config's
    both = json.loads((ev / "digits150_eval" / "report.json").read_text())
    assert [m["name"] for m in both["models"]] == ["teacher", "student1"] and "mce" in both
    one = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert one["settings"]["num_examples"] == 3
    assert len(one["corruption"]) == 15  # the default grids
    assert all(len(severities) == 5 for severities in one["corruption"].values())
    assert set(one["fgsm"]) == {"1", "2", "4", "8", "16"}
    seeded = json.loads((tmp_path / "seed1" / "results.json").read_text())["config"]
    assert (seeded["seed"], seeded["deterministic"]) == (1, True)
    assert os.path.exists(tmp_path / "digits_robustness" / "robustness" / "report.json")


def _write_image_folder(root, names, count: int) -> None:
    """`count` random 32 px PNGs per class folder of `names` ("." : a flat folder of
    unlabeled images); a setup step the docs leave to the reader, written here."""
    from noisy_student_tf.data import schema

    rng = np.random.default_rng(len(str(root)))
    for name in names:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            with open(os.path.join(root, name, f"{i}.png"), "wb") as f:
                f.write(schema.encode_png(image))


# The tool's own script, under tfds' mock data (no download): its flags and main as written.
UNDER_MOCK_TFDS = """
import runpy, sys
import tensorflow_datasets as tfds
sys.argv[0] = "tools/make_records.py"
with tfds.testing.mock_data(num_examples=100):
    runpy.run_path(sys.argv[0], run_name="__main__")
"""
CIFAR_SIZES = (
    "--config.data.num_labeled_per_class=2",
    "--config.num_iterations=1",
    "--config.train.teacher_epochs=1",
    "--config.train.student_epochs=1",
    "--config.train.steps_per_epoch=1",
    "--config.train.batch_size=4",
    "--config.teacher.width_coefficient=0.25",
    "--config.teacher.depth_coefficient=0.25",
    "--config.student.width_coefficient=0.25",
    "--config.student.depth_coefficient=0.25",
    "--config.pseudo.threshold=0.0",  # a 1-step teacher is not confident yet
    "--config.pseudo.images_per_class=4",
    "--config.verbose=0",
)


def _manifest(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_cifar10_configs_on_records_the_tools_wrote(tmp_path):
    """make_records from a tfds split and from an image folder (--prefix, --class_map)
    into one folder, cifar10_4k.py and cifar10_4k.py:smoke through the loop on it, and
    tools/evaluate.py with its default flags on the README's glob."""
    cifar, images = tmp_path / "cifar", tmp_path / "images"
    mock = f"python -c {shlex.quote(UNDER_MOCK_TFDS)}"
    paths = {"/data/src": cifar, "--num_shards=16": "--num_shards=2", "--num_shards=64": ""}
    paths |= {"/data/in1k/val": images, "/data/rec/test": cifar, "/data/rec/train": cifar}
    paths |= {"../shared/data/cifar10": cifar, "runs/cifar10_4k_cpu": tmp_path / "c4k"}
    paths |= {"runs/eval": tmp_path / "eval"}
    run_commands(
        [sized(TFDS_RECORDS, paths).replace("python tools/make_records.py", mock)], tmp_path
    )
    # A test folder of one image per class, named as the tfds split names them.
    _write_image_folder(images, list(json.loads((cifar / "class_map.json").read_text())), 1)
    run_commands(
        [
            sized(TEST_RECORDS, paths),
            sized(CIFAR_DEFAULT, paths, f"--workdir={tmp_path / 'c4k'}", *CIFAR_SIZES),
            # The config's docstring command, :smoke, on the same records.
            " ".join(
                [
                    "python experiments/noisy_student.py",
                    "--config=experiments/configs/cifar10_4k.py:smoke",
                    f"--config.data.path={cifar} --workdir={tmp_path / 'smoke'}",
                    "--config.data.num_labeled_per_class=2 --config.train.batch_size=4",
                    "--config.train.steps_per_epoch=1",
                ]
            ),
            sized(EVALUATE_CIFAR, paths, *SMALL_GRIDS),
        ],
        tmp_path,
    )
    assert _manifest(cifar)["written"] == 10  # the last write: the test split
    assert sorted(os.path.basename(f) for f in glob.glob(f"{cifar}/*.tfrecord")) == [
        "test-00000-of-00001.tfrecord",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    class_map = json.loads((cifar / "class_map.json").read_text())
    assert sorted(class_map.values()) == list(range(10))  # tfds' ids, the folder's by name
    for run in ("c4k", "smoke"):
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert [r["role"] for r in results["models"]] == ["teacher", "student"], run
        teacher = results["models"][0]
        assert teacher["kept"] + teacher["dropped"] == 100 - 2 * 10  # mock train - labeled
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["settings"]["num_examples"] == 10
    assert report["settings"]["class_names"] == list(class_map)


B0_SIZES = (  # imagenet.py:b0 at toy sizes, as its :smoke variant shrinks it
    "--config.strategy=default",  # the config's is tpu
    "--config.data.num_classes=4",
    "--config.data.image_size=32",
    "--config.teacher.width_coefficient=0.125",
    "--config.teacher.depth_coefficient=0.125",
    "--config.student.width_coefficient=0.125",
    "--config.student.depth_coefficient=0.125",
    "--config.train.batch_size=4",
    "--config.train.steps_per_epoch=1",
    "--config.train.teacher_epochs=1",
    "--config.train.student_epochs=1",
    "--config.train.warmup_epochs=0",
    "--config.train.eval_batch_size=16",
    "--config.pseudo.threshold=0.0",  # a 1-step teacher is not confident yet
    "--config.pseudo.images_per_class=4",
    "--config.pseudo.num_output_shards=1",
    "--config.verbose=0",
)


def test_imagenet_b0_recipe_step_by_step(tmp_path):
    """README's "at scale" block in its order: records, imagenet.py:b0 through the loop,
    then label -> filter/balance -> one student from the tools' output -> label again."""
    rec, work = tmp_path / "rec", tmp_path / "work"
    paths = {"/data/in1k": tmp_path / "in1k", "/data/pool_images": tmp_path / "pool_images"}
    paths |= {"/data/rec": rec, "/work": work, "runs/": f"{tmp_path}/"}
    paths |= {"--num_shards=1024": "--num_shards=2", "--num_shards=4096": "--num_shards=2"}
    paths |= {"--num_shards=64": "--num_shards=1", "--images_per_class=130000": ""}
    paths |= {"--num_output_shards=1024": "--num_output_shards=1"}
    paths |= {"--threshold=0.3": "--threshold=0.0"}  # a 1-step teacher is not confident yet
    classes = ("n01", "n02", "n03", "n04")
    _write_image_folder(tmp_path / "in1k" / "train", classes, 3)
    _write_image_folder(tmp_path / "in1k" / "val", classes, 2)
    _write_image_folder(tmp_path / "pool_images", ".", 12)
    run_commands(
        [
            sized(TRAIN_RECORDS, paths),
            sized(POOL_RECORDS, paths),
            sized(TEST_RECORDS, paths),
            sized(B0_LOOP, paths, *B0_SIZES),
            sized(B0_LABEL, paths, "--batch_size=8"),
            sized(B0_FILTER, paths, "--images_per_class=4"),
            sized(B0_STUDENT, paths, *B0_SIZES),
            sized(B0_RELABEL, paths, "--batch_size=8"),
        ],
        tmp_path,
    )
    assert [_manifest(rec / s)["written"] for s in ("train", "pool", "test")] == [12, 12, 8]
    at_scale = json.loads((tmp_path / "at_scale" / "results.json").read_text())
    assert [r["role"] for r in at_scale["models"]] == ["teacher", "student"]
    resolved = at_scale["config"]
    assert resolved["student"]["architecture"] == "efficientnet-b0"
    assert resolved["pseudo"]["balance"] == "official"  # the b0 config's, kept
    for labeled in (work / "labeled", work / "labeled_2"):
        manifest = _manifest(labeled)
        assert manifest["complete"] and manifest["labeled"] == 12, labeled
    assert _manifest(work / "pseudo")["in"] == 12
    # One student from the tools' output: no teacher trained, its selection read
    # from the folder's manifest, the teacher it learned from named by content.
    student_dir = tmp_path / "student"
    (row,) = json.loads((student_dir / "results.json").read_text())["models"]
    assert (row["role"], row["iteration"], row["kept"]) == ("student", 1, None)
    assert not list(student_dir.glob("iteration_0_*"))
    settings = json.loads((student_dir / "iteration_1_student.json").read_text())["settings"]
    assert settings["learned_from"].startswith("sha256:")
    assert (student_dir / "saved_model" / "saved_model.pb").exists()
    # A pseudo-labeled folder over other classes (its manifest says 5) is refused
    # before training, in one line.
    other = tmp_path / "pseudo_5"
    shutil.copytree(work / "pseudo", other)
    manifest = _manifest(other) | {"num_classes": 5}
    (other / "manifest.json").write_text(json.dumps(manifest))
    command = sized(B0_STUDENT, paths | {"/work/pseudo": other, "runs/": f"{tmp_path}/5_"})
    proc = subprocess.run(
        ["bash", "-c", " ".join([command, *map(shlex.quote, B0_SIZES)])],
        cwd=REPO,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "holds pseudo labels over 5 classes but data.num_classes=4" in proc.stderr
    assert not list((tmp_path / "5_student").glob("*.keras"))  # nothing trained


def _write_official_checkpoint(folder) -> None:
    """An EfficientNet-B0 (4 classes, 32 px) saved under the official TF1 variable names,
    as the released tar.gz holds them: model.ckpt-N.* and a `checkpoint` state file."""
    import keras
    from test_official_checkpoint import official_names, write_checkpoint

    from noisy_student_tf.models import build_efficientnet

    model = build_efficientnet("efficientnet-b0", 4, input_shape=(32, 32, 3))
    scope = "efficientnet-b0"
    tensors = {name: keras.ops.convert_to_numpy(w) for name, w in official_names(model, scope)}
    os.makedirs(folder)
    write_checkpoint(os.path.join(folder, "model.ckpt-1"), tensors)
    with open(os.path.join(folder, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt-1"\n')


YOUR_IMAGENET_CONFIG = '''
"""imagenet.py:b0 on small record folders, at toy sizes (docs/models.md's example)."""
from noisy_student_tf.configs import imagenet


def get_config():
    config = imagenet.get_config("b0")
    config.strategy = "default"
    config.data.labeled, config.data.unlabeled, config.data.test = {folders!r}
    config.data.num_classes, config.data.image_size = 4, 32
    config.train.batch_size, config.train.steps_per_epoch = 4, 1
    config.train.teacher_epochs = config.train.student_epochs = 1
    config.train.warmup_epochs, config.train.eval_batch_size = 0, 16
    config.pseudo.threshold, config.pseudo.images_per_class = 0.0, 4
    config.pseudo.num_output_shards = 1
    config.verbose = 0
    return config
'''


def _write_records(folder, labels, seed):
    from conftest import source_examples, write_records

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    write_records(folder, source_examples(images, labels))
    return str(folder)


def test_official_and_keras_applications_teachers_through_the_loop(tmp_path):
    """docs/models.md on a checkpoint in the official format: label with it, start the
    loop from it, convert it, and start the loop from the keras.applications file."""
    folders = (
        _write_records(tmp_path / "labeled", np.arange(8) % 4, 0),
        _write_records(tmp_path / "pool", [-1] * 8, 1),
        _write_records(tmp_path / "test", np.arange(8) % 4, 2),
    )
    (tmp_path / "your_imagenet_config.py").write_text(YOUR_IMAGENET_CONFIG.format(folders=folders))
    ckpt = tmp_path / "noisy_student_efficientnet-b0"
    paths = {"/path/to/noisy_student_efficientnet-b0": ckpt, "keras_weights": tmp_path / "kw"}
    paths |= {
        "--input=...": f"--input={folders[1]}",
        "--output_dir=...": f"--output_dir={tmp_path}/l",
    }
    paths |= {"/path/to": tmp_path, "--workdir=...": f"--workdir={tmp_path}/from_official"}
    weights = tmp_path / "kw" / "noisy_student_efficientnet-b0.weights.h5"
    paths_ckpt, from_h5 = "/path/to/noisy_student_efficientnet-b0", f"--workdir={tmp_path}/from_h5"
    _write_official_checkpoint(ckpt)
    run_commands(
        [
            sized(OFFICIAL_LABEL, paths, "--batch_size=8"),
            sized(OFFICIAL_LOOP, paths),
            sized(CONVERT, paths),
            # The same teacher from the keras.applications file: its row only (the
            # student the loop trains from it was trained from the checkpoint above).
            sized(
                OFFICIAL_LOOP,
                paths | {str(paths_ckpt): weights, "--workdir=...": from_h5},
                "--config.num_iterations=0",
            ),
        ],
        tmp_path,
    )
    assert _manifest(tmp_path / "l")["labeled"] == 8
    rows = {}
    for run, roles in (("from_official", ["teacher", "student"]), ("from_h5", ["teacher"])):
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert [r["role"] for r in results["models"]] == roles, run
        rows[run] = results["models"][0]
    # One set of weights in two formats: the same teacher, the same test top-1 and selection.
    for key in ("test_top1", "kept"):
        assert rows["from_official"].get(key) == rows["from_h5"].get(key), key


def _parse_main_job_flags(argv: list[str]):
    """The main job's --config and --workdir, parsed as its command line parses them."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    argv = ["noisy_student.py", *argv]
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", "", "", flag_values=values)
    values(argv)
    return values.config


def test_ablations_resolve_validate_build_step(tmp_path, rng):
    """docs/results.md's ablations and second students: each command's config resolved from
    its own flags (its checkpoint path replaced) and validated, its teacher loaded the
    loop's way, its student built and trained one step on the teacher's filtered and
    balanced labels. The rest of such a run is the cifar10_4k:cpu loop that
    tests/test_cifar_cpu.py runs."""
    import keras
    import tensorflow as tf

    from noisy_student_tf import labeling
    from noisy_student_tf.loop.config_checks import validate_config
    from noisy_student_tf.training import trainer

    def shrink(config):  # sizes: tiny models, 2 labeled + 16 pool images, one step
        with config.unlocked():
            for block in (config.teacher, config.student):
                block.width_coefficient = block.depth_coefficient = 0.1
            config.train.batch_size, config.train.steps_per_epoch = 2, 1
        return config

    # The two checkpoints the commands start from, as the cpu run would have saved them.
    base = shrink(_parse_main_job_flags([f"--config={REPO}/experiments/configs/cifar10_4k.py:cpu"]))
    for stem, block in (
        ("iteration_0_teacher", base.teacher),
        ("iteration_1_student", base.student),
    ):
        model = trainer.build_model(block, 10, 32)
        head = model.get_layer("predictions")  # confident, as a trained teacher is (threshold 0.3)
        kernel, bias = head.get_weights()
        head.set_weights([kernel, bias + 10.0 * (np.arange(10) < 2)])  # classes 0 and 1
        model.save(str(tmp_path / f"{stem}.keras"))
    images = rng.integers(0, 256, (18, 32, 32, 3), dtype=np.uint8)
    for name, flags in ABLATIONS.items():
        command = doc_command(f"python experiments/noisy_student.py {flags}")
        argv = shlex.split(command.replace("runs/cifar10_4k_cpu/", f"{tmp_path}/"))[2:]
        config = _parse_main_job_flags(argv)
        validate_config(config)
        shrink(config)
        keras.backend.clear_session()
        teacher = trainer.load_teacher_checkpoint(config.teacher_checkpoint, 32, 10)
        probs = labeling.predict_probabilities(teacher, images[2:], verbose=0)
        pseudo = config.pseudo
        kept = labeling.filter_and_balance(probs, pseudo.threshold, pseudo.images_per_class)
        assert len(kept.indices), name
        targets = labeling.training_targets(
            probs[kept.indices], pseudo.soft, pseudo.temperature, config.train.label_smoothing
        )
        student, info = trainer.train_one(
            config,
            tf.distribute.get_strategy(),
            (images[:2], np.arange(2)),
            2,
            10,
            32,
            config.student,
            1,
            seed=0,
            unlabeled=(images[2:][kept.indices], targets),
        )
        trainer.check_student_size(teacher, student, config.allow_smaller_student)
        assert info["final_step"] == 1, name
        assert all(np.isfinite(w).all() for w in student.get_weights()), name


def _jpeg_records(folder, count: int):
    import tensorflow as tf
    from conftest import write_records

    from noisy_student_tf.data import schema

    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    encoded = [tf.io.encode_jpeg(x).numpy() for x in images]
    examples = (schema.source_example(e, i % 10, f"{i}".encode()) for i, e in enumerate(encoded))
    return write_records(folder, examples, prefix="test")


def test_every_benchmark_runs_at_a_small_size(tmp_path):
    """Each documented benchmark command with its sizes shrunk, on records we wrote;
    keras_applications.py and train_records.py run --quick in tests/test_benchmarks.py."""
    _jpeg_records(tmp_path / "cifar", 16)
    documented = [c for c in BENCHMARKS if c in documented_commands()]
    assert documented == list(BENCHMARKS)
    # keras_applications.py and train_records.py: their --quick runs in tests/test_benchmarks.py.
    scripts = {c.split()[1] for c in BENCHMARKS}
    scripts |= {"benchmarks/keras_applications.py", "benchmarks/train_records.py"}
    assert scripts == {
        p for p in glob.glob("benchmarks/*.py", root_dir=REPO) if not p.endswith("rounds.py")
    }  # rounds.py: the shared timing helper, tested in tests/test_benchmarks.py
    commands = []
    for command, flags in BENCHMARKS.items():
        flags = flags.replace("CIFAR", str(tmp_path / "cifar")).replace("OUT", str(tmp_path))
        commands.append(f"{command} {flags}")
    proc = run_commands(commands, tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line[:1] in ("{", "[")]  # [: model_table
    assert len(lines) >= len(BENCHMARKS) - 2  # every one but the plots prints a JSON line
    assert all(SAME_RUN_AS[c] in BENCHMARKS for c in SAME_RUN_AS)
    for line in lines:
        json.loads(line)
    assert (tmp_path / "ra.png").exists() and (tmp_path / "ra_variants.png").exists()
