"""Every bad input: exit code 2, exactly one line on stderr, no traceback, nothing written.

One table for every command. A case is an argv template and a piece of the expected message;
the fields are {model} the tiny random BERT, {ft} the tiny model fine-tuned on SST-2 by obert,
{mc} a tiny random multiple-choice BERT,
{minilm} MiniLM without a task head, {glue} the GLUE folder, {tmp} a scratch folder holding the
bad files below, {out} an --output that must not appear. New inputs join the table.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from obert.cli import main

SQUAD = ("--task squad --validation-file {tmp}/squad-dev.json --train-file {tmp}/squad-dev.json "
         "--max-seq-length 128 --doc-stride 32")
ONESHOT = "oneshot --model {ft} --task sst2 --data-dir {glue} --sparsity 0.5"
PRUNE = "prune --recipe {tmp}/ok.yaml --model {ft} --task sst2 --data-dir {glue}"
MLM = "finetune --model {model} --task mlm"
MC = "finetune --model {model} --task multiple_choice --output {out} --train-file"
NAN_IN_QUERY = ("has 1 non-finite value (NaN or inf) in "
                "bert.encoder.layer.0.attention.self.query.weight")
NO_HUB_MODEL = "'no-org/no-model' is "  # not a local folder, and the hub cannot be reached
GLUE_TRAIN = "finetune --model {model} --task sst2 --train-file"
STSB = "finetune --model {model} --task stsb"
SQUAD_TRAIN = ("finetune --model {model} --task squad --validation-file {tmp}/ok-squad.json "
               "--max-seq-length 128 --doc-stride 32 --train-file")
OUT = "oneshot --model {ft} --task sst2 --sparsity 0.5 --method magnitude"

CASES: dict[str, tuple[str, str]] = {
    # -- arguments and numbers ---------------------------------------------------------------
    "unknown-task": ("finetune --model {model} --task sst5 --data-dir {glue} --output {out}",
                     "unknown task 'sst5'"),
    "missing-sparsity": ("oneshot --model {model} --task sst2 --data-dir {glue} --output {out}",
                         "required: --sparsity"),
    "sparsity-one": (f"{ONESHOT[:-13]} --sparsity 1.0 --output {{out}}", "--sparsity: 1.0 must be below 1"),
    "sparsity-negative": (f"{ONESHOT[:-13]} --sparsity -0.1 --output {{out}}",
                          "--sparsity: -0.1 must be ≥ 0"),
    "lr-negative": ("finetune --model {model} --task sst2 --lr -1 --output {out}", "--lr: -1 must be > 0"),
    "lr-nan": ("finetune --model {model} --task sst2 --lr nan --output {out}", "not a finite number"),
    "epochs-zero": ("finetune --model {model} --task sst2 --epochs 0 --output {out}",
                    "--epochs: 0 must be > 0"),
    "epochs-negative": ("finetune --model {model} --task sst2 --epochs -1 --output {out}",
                        "--epochs: -1 must be > 0"),
    "batch-size-zero": ("finetune --model {model} --task sst2 --batch-size 0 --output {out}",
                        "--batch-size: 0 must be ≥ 1"),
    "eval-batch-size-zero": ("evaluate --model {ft} --task sst2 --data-dir {glue} --batch-size 0",
                             "--batch-size: 0 must be ≥ 1"),
    "max-train-samples-zero": ("finetune --model {model} --task sst2 --max-train-samples 0 "
                               "--output {out}", "--max-train-samples: 0 must be ≥ 1"),
    "seq-len-short": ("finetune --model {model} --task sst2 --max-seq-length 4 --output {out}",
                      "--max-seq-length: 4 must be ≥ 8"),
    "grad-batch-size-zero": (f"{ONESHOT} --grad-batch-size 0 --output {{out}}",
                             "--grad-batch-size: 0 must be ≥ 1"),
    "num-grads-zero": (f"{ONESHOT} --num-grads 0 --output {{out}}", "--num-grads: 0 must be ≥ 1"),
    "damp-zero": (f"{ONESHOT} --damp 0 --output {{out}}", "--damp: 0 must be > 0"),
    "bad-regex": (f"{ONESHOT} --include [ --output {{out}}", "'[' is not a valid regex"),
    "unknown-method": (f"{ONESHOT} --method random --output {{out}}",
                       "--method 'random' is not one of"),
    "block4-fisher-block-50": (f"{ONESHOT} --mask block4 --fisher-block-size 50 --output {{out}}",
                               "--fisher-block-size 50 must be a positive multiple of 4"),
    "nothing-to-prune": (f"{ONESHOT} --exclude . --output {{out}}", "no prunable layers"),
    "fisher-over-budget": (f"{ONESHOT} --max-fisher-memory 1e-9 --num-grads 8 "
                           "--max-train-samples 16 --output {out}", "over --max-fisher-memory"),
    "bf16-and-fp16": (f"{PRUNE} --bf16 --fp16 --output {{out}}", "not allowed with argument --bf16"),
    "logging-steps-zero": (f"{PRUNE} --logging-steps 0 --output {{out}}",
                           "--logging-steps: 0 must be ≥ 1"),
    "demo-num-grads-zero": ("demo --num-grads 0 --output {out}", "--num-grads: 0 must be ≥ 1"),
    "demo-epochs-zero": ("demo --epochs 0 --output {out}", "--epochs: 0 must be > 0"),
    "bench-seq-len-zero": ("bench --model {ft} --seq-len 0", "--seq-len: 0 must be ≥ 1"),
    "bench-rounds-zero": ("bench --model {ft} --rounds 0", "--rounds/--repeats: 0 must be ≥ 1"),
    "serve-batch-zero": ("serve --model {ft} --max-batch-size 0", "--max-batch-size: 0 must be ≥ 1"),
    "serve-wait-negative": ("serve --model {ft} --max-wait-ms -1", "--max-wait-ms: -1 must be ≥ 0"),
    "serve-port-too-big": ("serve --model {ft} --port 70000", "70000 must be below 65536"),
    "serve-threads-zero": ("serve --model {ft} --threads 0", "--threads: 0 must be ≥ 1"),
    "serve-inputs-zero": ("serve --model {ft} --max-inputs 0", "--max-inputs: 0 must be ≥ 1"),
    "serve-body-zero": ("serve --model {ft} --max-body-bytes 0", "--max-body-bytes: 0 must be ≥ 1"),
    "serve-length-small": ("serve --model {ft} --max-length 0", "--max-length: 0 must be ≥ 8"),
    "serve-runtime-unknown": ("serve --model {ft} --runtime bogus", "invalid choice: 'bogus'"),
    "serve-no-model": ("serve --model {tmp}/none --port 0", "does not exist"),
    # -- the model and the sequence length ----------------------------------------------------
    "no-such-model": ("oneshot --model {tmp}/no-model --task sst2 --data-dir {glue} "
                      "--sparsity 0.5 --method magnitude --output {out}", "does not exist"),
    "hub-id-offline": ("finetune --model no-org/no-model --task sst2 --data-dir {glue} "
                       "--output {out}", "cannot be reached"),
    "corrupt-config": ("evaluate --model {tmp}/broken-config --task sst2 --data-dir {glue}",
                       "needs a valid config.json"),
    "seq-len-over-positions": ("finetune --model {model} --task sst2 --max-seq-length 512 "
                               "--output {out}", "exceeds the 128 positions"),
    "eval-seq-len-over-positions": ("evaluate --model {ft} --task sst2 --data-dir {glue} "
                                    "--max-seq-length 512", "exceeds the 128 positions"),
    "evaluate-headless-model": ("evaluate --model {minilm} --task sst2 --data-dir {glue}",
                                "has no trained sst2 head"),
    "oneshot-obert-headless": ("oneshot --model {minilm} --task sst2 --data-dir {glue} "
                               "--sparsity 0.5 --output {out}", "has no trained sst2 head"),
    "teacher-without-head": (f"{PRUNE} --teacher {{minilm}} --output {{out}}",
                             "the teacher {minilm} has no trained sst2 head"),
    "default-teacher-not-finetuned": ("prune --recipe {tmp}/ok.yaml --model {model} --task sst2 "
                                      "--data-dir {glue} --output {out}",
                                      "is not fine-tuned on sst2"),
    # -- data ---------------------------------------------------------------------------------
    "empty-data-dir": ("finetune --model {model} --task sst2 --data-dir {tmp}/empty --output {out}",
                       "no train data for sst2"),
    "missing-text-column": ("finetune --model {model} --task sst2 --train-file {tmp}/text.csv "
                            "--output {out}", "lacks column(s) sentence"),
    "label-out-of-range-eval": ("evaluate --model {ft} --task sst2 --validation-file "
                                "{tmp}/label5.csv", "label 5"),
    "label-negative-eval": ("evaluate --model {ft} --task sst2 --validation-file "
                            "{tmp}/label-neg.csv", "without a label"),
    "label-out-of-range-finetune": ("finetune --model {model} --task sst2 --train-file "
                                    "{tmp}/label5.csv --output {out}", "label 5"),
    "label-out-of-range-oneshot": ("oneshot --model {ft} --task sst2 --train-file "
                                   "{tmp}/label5.csv --sparsity 0.5 --output {out}", "label 5"),
    "label-out-of-range-prune": (f"{PRUNE[:-17]} --train-file {{tmp}}/label5.csv "
                                 "--validation-file {tmp}/ok.csv --output {out}", "label 5"),
    "label-missing": ("finetune --model {model} --task sst2 --train-file {tmp}/no-label.csv "
                      "--output {out}", "without a label"),
    "header-only": ("finetune --model {model} --task sst2 --train-file {tmp}/header.csv "
                    "--output {out}", "has no rows"),
    "header-only-tsv": ("finetune --model {model} --task sst2 --train-file {tmp}/header.tsv "
                        "--output {out}", "has no rows"),
    "corrupt-jsonl": ("finetune --model {model} --task sst2 --train-file {tmp}/bad.jsonl "
                      "--output {out}", "bad.jsonl, line 2: not JSON"),
    "corrupt-parquet": ("finetune --model {model} --task sst2 --train-file {tmp}/bad.parquet "
                        "--output {out}", "cannot read"),
    "not-utf8-tsv": ("finetune --model {model} --task sst2 --train-file {tmp}/latin1.tsv "
                     "--output {out}", "is not UTF-8"),
    "squad-without-paragraphs": (f"finetune --model {{model}} {SQUAD} --output {{out}}",
                                 "squad-dev.json, line 1, article 1: paragraphs is missing"),
    "keep-sparsity-of-a-dense-model": ("finetune --model {ft} --task sst2 --data-dir {glue} "
                                       "--max-train-samples 16 --keep-sparsity --output {out}",
                                       "has no zero weights"),
    "unknown-split": ("evaluate --model {ft} --task sst2 --data-dir {glue} --split dev_mm",
                      "no split 'dev_mm'"),
    "evaluate-without-dev": (f"{ONESHOT} --method magnitude --data-dir {{tmp}}/train-only "
                             "--evaluate --output {out}", "no dev data for sst2"),
    # -- SQuAD windows ------------------------------------------------------------------------
    "squad-stride-too-long": ("finetune --model {model} --task squad --validation-file "
                              "{tmp}/ok-squad.json --train-file {tmp}/ok-squad.json "
                              "--max-seq-length 128 --output {out}",
                              "--doc-stride 128 must be below the 60 context tokens"),
    "squad-window-too-short": ("finetune --model {model} --task squad --validation-file "
                               "{tmp}/ok-squad.json --train-file {tmp}/ok-squad.json "
                               "--max-seq-length 64 --doc-stride 32 --output {out}",
                               "leaves no room for context"),
    # -- outputs ------------------------------------------------------------------------------
    "output-parent-missing": ("oneshot --model {ft} --task sst2 --sparsity 0.5 --method "
                              "magnitude --output {tmp}/no/such/out", "parent folder"),
    "output-is-a-file": ("oneshot --model {ft} --task sst2 --sparsity 0.5 --method magnitude "
                         "--output {tmp}/a-file --overwrite", "is a file, not a folder"),
    "output-not-writable": ("oneshot --model {ft} --task sst2 --sparsity 0.5 --method "
                            "magnitude --output /proc/obert-out", "cannot write in /proc"),
    # -- layer dropping -----------------------------------------------------------------------
    "keep-empty": ("drop-layers --model {ft} --keep --output {out}", "expected at least one"),
    "keep-out-of-range": ("drop-layers --model {ft} --keep 0 5 --output {out}",
                          "--keep 5 is out of range: the model has layers 0 to 1"),
    "keep-repeated": ("drop-layers --model {ft} --keep 1 1 --output {out}", "repeats a layer"),
    "keep-and-layers": ("drop-layers --model {ft} --keep 1 --layers 1 --output {out}",
                        "not allowed with argument --keep"),
    "layers-too-many": ("drop-layers --model {ft} --layers 5 --output {out}",
                        "cannot keep 5 of 2 layers"),
    "recipe-keep-out-of-range": ("prune --recipe {tmp}/keep9.yaml --model {ft} --task sst2 "
                                 "--data-dir {glue} --output {out}",
                                 "recipe key layers.keep 9 is out of range"),
    # -- recipes and checkpoints --------------------------------------------------------------
    "recipe-empty": ("prune --recipe {tmp}/empty.yaml --model {ft} --task sst2 --data-dir {glue} "
                     "--output {out}", "is empty"),
    "recipe-binary": ("prune --recipe {tmp}/binary.yaml --model {ft} --task sst2 --data-dir "
                      "{glue} --output {out}", "not a text file"),
    "recipe-bad-key": ("prune --recipe {tmp}/bad-key.yaml --model {ft} --task sst2 --data-dir "
                       "{glue} --output {out}", "recipe key pruning.final_sparsity = 1.5"),
    "resume-nothing": (f"{PRUNE} --resume --output {{out}}", "no complete checkpoint"),
    "recipe-qat-zero-epochs": ("prune --recipe {tmp}/qat0.yaml --model {ft} --task sst2 "
                               "--data-dir {glue} --output {out}",
                               "recipe key quantization.epochs = 0.0 must be positive"),
    "recipe-qat-cyclic": ("prune --recipe {tmp}/qat-cyclic.yaml --model {ft} --task sst2 "
                          "--data-dir {glue} --output {out}",
                          "recipe key quantization.lr.schedule = 'cyclic_linear'"),
    # -- export and bench --task --------------------------------------------------------------
    "export-into-folder": ("export --model {ft} --output {tmp}", "is a folder"),
    "export-no-parent": ("export --model {ft} --output {tmp}/no/m.onnx", "does not exist"),
    "export-seq-too-long": ("export --model {ft} --output {out} --max-seq-length 4096",
                            "--max-seq-length 4096 exceeds"),
    "export-negative-tolerance": ("export --model {ft} --output {out} --tolerance -1",
                                  "--tolerance: -1 must be ≥ 0"),
    "export-zero-rows": ("export --model {ft} --output {out} --check-rows 0",
                         "--check-rows: 0 must be ≥ 1"),
    "export-unknown-task": ("export --model {ft} --output {out} --task sst5", "sst5"),
    "bench-unknown-task": ("bench --model {ft} --task sst5 --repeats 1", "sst5"),
    "bench-task-no-dev": ("bench --model {ft} --task sst2 --validation-file {tmp}/none.tsv "
                          "--repeats 1", "none.tsv"),
    # -- masked-language modelling and sparse transfer ------------------------------------------
    "mlm-empty-text": (f"{MLM} --train-file {{tmp}}/empty.txt --output {{out}}", "has no text"),
    "mlm-blank-text": (f"{MLM} --train-file {{tmp}}/blank.txt --output {{out}}", "has no text"),
    "mlm-not-utf8": (f"{MLM} --train-file {{tmp}}/latin1.txt --output {{out}}", "is not UTF-8"),
    "mlm-jsonl-without-text": (f"{MLM} --train-file {{tmp}}/no-text.jsonl --output {{out}}",
                               "no-text.jsonl, line 1: text is missing"),
    "mlm-jsonl-not-json": (f"{MLM} --train-file {{tmp}}/not-json.jsonl --output {{out}}",
                           "line 2: not JSON"),
    "mlm-csv-corpus": (f"{MLM} --train-file {{tmp}}/ok.csv --output {{out}}",
                       "unsupported text file type"),
    "mlm-no-text-given": ("finetune --model {model} --task mlm --output {out}",
                          "the mlm task needs text: pass --train-file"),
    "mlm-seq-len-over-positions": (f"{MLM} --train-file {{tmp}}/ok.txt --max-seq-length 512 "
                                   "--output {out}", "exceeds the 128 positions"),
    "mlm-text-shorter-than-a-block": (f"{MLM} --train-file {{tmp}}/ok.txt --head-only "
                                      "--max-seq-length 128 --output {out}", "not one block"),
    "mlm-model-without-mlm-class": ("finetune --model {tmp}/gpt2 --task mlm --train-file "
                                    "{tmp}/ok.txt --output {out}",
                                    "no masked-language-model head in transformers"),
    "mlm-headless-finetune": (f"{MLM} --train-file {{tmp}}/ok.txt --output {{out}}",
                              "has no trained masked-LM head"),
    "mlm-headless-prune": ("prune --recipe {tmp}/ok.yaml --model {model} --task mlm "
                           "--train-file {tmp}/ok.txt --output {out}",
                           "--task mlm --head-only"),
    "mlm-headless-oneshot": ("oneshot --model {model} --task mlm --train-file {tmp}/ok.txt "
                             "--sparsity 0.5 --output {out}", "has no trained masked-LM head"),
    "dataset-for-glue": ("finetune --model {model} --task sst2 --dataset wikitext --output {out}",
                         "--dataset and --streaming are for --task mlm"),
    "streaming-without-count": ("finetune --model {model} --task mlm --dataset wikitext "
                                "--streaming --output {out}", "pass --max-train-samples"),
    "head-only-and-keep-sparsity": (f"{MLM} --train-file {{tmp}}/ok.txt --head-only "
                                    "--keep-sparsity --output {out}", "do not go together"),
    # -- multiple choice ------------------------------------------------------------------------
    "mc-choice-count": (f"{MC} {{tmp}}/mc-count.jsonl",
                        "mc-count.jsonl, line 2: it has 2 choices where the first row has 3"),
    "mc-label-outside": (f"{MC} {{tmp}}/mc-label.jsonl",
                         "mc-label.jsonl, line 1: label 3 is outside the 3 choices"),
    "mc-empty-choice": (f"{MC} {{tmp}}/mc-empty.jsonl", "mc-empty.jsonl, line 2: choice 1 is empty"),
    "mc-csv-without-choices": (f"{MC} {{tmp}}/mc-nochoice.csv",
                               "mc-nochoice.csv, line 2: it has no choices"),
    "mc-choice-leaves-no-room": (f"{MC} {{tmp}}/mc-long.jsonl --max-seq-length 16",
                                 "line 1: the choice"),
    "mc-not-json": (f"{MC} {{tmp}}/mc-not-json.jsonl", "mc-not-json.jsonl, line 2: not JSON"),
    "mc-text-file": (f"{MC} {{tmp}}/ok.txt", "unsupported file type for multiple choice"),
    "mc-no-files-in-folder": ("finetune --model {model} --task multiple_choice --data-dir "
                              "{tmp}/empty --output {out}", "no train data for multiple_choice"),
    "mc-dev-unanswered": ("evaluate --model {mc} --task multiple_choice --validation-file "
                          "{tmp}/mc-unanswered.jsonl", "mc-unanswered.jsonl, line 2: label is "
                          "missing (a row without an answer)"),
    "mc-model-without-mc-class": ("finetune --model {tmp}/gpt2 --task multiple_choice "
                                  "--train-file {tmp}/mc-ok.jsonl --output {out}",
                                  "no multiple-choice head in transformers"),
    "winogrande-no-blank": ("finetune --model {model} --task winogrande --train-file "
                            "{tmp}/wg-noblank.jsonl --output {out}",
                            "line 1: the sentence has 0 blanks"),
    "winogrande-two-blanks": ("finetune --model {model} --task winogrande --train-file "
                              "{tmp}/wg-twoblanks.jsonl --output {out}",
                              "line 2: the sentence has 2 blanks"),
    "winogrande-unknown-size": ("finetune --model {model} --task winogrande --data-dir {tmp} "
                                "--dataset-config winogrande_xxl --output {out}",
                                "is not a WinoGrande size"),
    "csqa-dataset-config": ("finetune --model {model} --task commonsense_qa --data-dir {tmp} "
                            "--dataset-config winogrande_l --output {out}",
                            "--dataset-config is for winogrande"),
    "csqa-answer-not-a-choice": ("finetune --model {model} --task commonsense_qa --train-file "
                                 "{tmp}/csqa-bad.jsonl --output {out}",
                                 "line 1: answerKey 'F' is not one of"),
    "bench-choices-not-mc": ("bench --model {ft} --choices 3 --repeats 1",
                             "--choices is for multiple-choice models"),
    "bench-choices-one": ("bench --model {mc} --choices 1 --repeats 1", "--choices: 1 must be ≥ 2"),
    "bench-mc-task-on-classifier": ("bench --model {ft} --task commonsense_qa --data-dir "
                                    "{tmp} --repeats 1", "commonsense_qa is multiple choice"),
    "export-mc-task-on-classifier": ("export --model {ft} --output {out} --task commonsense_qa "
                                     "--validation-file {tmp}/csqa-ok.jsonl",
                                     "the model is not a multiple-choice model"),
    "mc-question-null": (f"{MC} {{tmp}}/mc-null.jsonl", "mc-null.jsonl, line 1: question is "
                         "missing"),
    "export-mc-model-glue-task": ("export --model {mc} --output {out} --task sst2 --data-dir "
                                  "{glue}", "has no choices"),
    "recipe-first-step-zero": ("recipe --target-sparsity 0.9 --epochs 3 --first-step 0",
                               "--first-step: 0 must be > 0"),
    "recipe-first-step-one": ("recipe --target-sparsity 0.9 --epochs 3 --first-step 1",
                              "--first-step: 1 must be below 1"),
    "recipe-unknown-family": ("recipe --target-sparsity 0.9 --epochs 3 --task nope",
                              "unknown task 'nope'"),
    "recipe-schedule-unknown": ("recipe --schedule nope --target-sparsity 0.9 --epochs 3",
                                "--schedule 'nope' is not one of scaled, paper, smc-bench"),
    "recipe-method-unknown": ("recipe --method movement --target-sparsity 0.9 --epochs 3",
                              "--method 'movement' is not one of obert, gmp, magnitude"),
    "recipe-mask-unknown": ("recipe --mask block8 --target-sparsity 0.9 --epochs 3",
                            "--mask 'block8' is not one of unstructured, block4"),
    "recipe-layers-all": ("recipe --layers 12 --target-sparsity 0.9 --epochs 3",
                          "--layers 12 must be 1 to 11"),
    "recipe-layers-zero": ("recipe --layers 0 --target-sparsity 0.9 --epochs 3",
                           "--layers: 0 must be ≥ 1"),
    "recipe-epochs-zero": ("recipe --target-sparsity 0.9 --epochs 0", "--epochs: 0 must be > 0"),
    "recipe-target-zero": ("recipe --schedule paper --target-sparsity 0 --epochs 30",
                           "--target-sparsity 0 is outside (0, 1)"),
    "recipe-no-target": ("recipe --schedule paper --task squad --epochs 30 --qat",
                         "needs --target-sparsity and --epochs"),
    "recipe-transfer-target": ("recipe --schedule transfer --epochs 8 --target-sparsity 0.9",
                               "--schedule transfer prunes nothing"),
    "recipe-transfer-mask": ("recipe --schedule transfer --epochs 8 --mask block4",
                             "drop --mask"),
    "recipe-transfer-no-epochs": ("recipe --schedule transfer --task squad",
                                  "--schedule transfer needs --epochs"),
    "recipe-smc-first-step": ("recipe --schedule smc-bench --task mc --epochs 4.926 "
                              "--target-sparsity 0.8 --first-step 0.3", "drop --first-step"),
    # -- outputs that hold inputs, the file system's errors (issue 24) ------------------------
    # @@ outputs-and-fs
    # --overwrite replaces only a folder obert wrote (its .obert-output marker) or an empty one,
    # never the current folder, an input or a folder holding one; {out!s:.0} is "" (an empty arg)
    "overwrite-current-folder": (f"{OUT} --output . --overwrite", "holds the current folder"),
    "overwrite-root": (f"{OUT} --output / --overwrite", "holds the current folder"),
    "output-empty": (f"{OUT} --output {{out!s:.0}} --overwrite", "--output is empty"),
    "prune-output-empty": (f"{PRUNE} --output {{out!s:.0}} --overwrite", "--output is empty"),
    "overwrite-the-model": (f"{OUT} --output {{ft}} --overwrite",
                            "--output {ft} is an input of this run"),
    "overwrite-parent-of-the-model": (f"{OUT} --output {{ft.parent}} --overwrite",
                                      "holds an input ({ft}) of this run"),
    "drop-layers-over-the-model": ("drop-layers --model {ft} --keep 0 --output {ft} --overwrite",
                                   "is an input of this run"),
    "overwrite-the-teacher": (f"{PRUNE} --teacher {{tmp}}/teacher --output {{tmp}}/teacher "
                              "--overwrite", "--output {tmp}/teacher is an input of this run"),
    "overwrite-the-data-dir": ("finetune --model {model} --task sst2 --data-dir {tmp}/train-only "
                               "--output {tmp}/train-only --overwrite",
                               "{tmp}/train-only is an input of this run"),
    "overwrite-parent-of-train-file": ("finetune --model {model} --task sst2 --train-file "
                                       "{tmp}/held/ok.csv --output {tmp}/held --overwrite",
                                       "holds an input ({tmp}/held/ok.csv) of this run"),
    "overwrite-parent-of-recipe": ("prune --recipe {tmp}/held/ok.yaml --model {ft} --task sst2 "
                                   "--data-dir {glue} --output {tmp}/held --overwrite",
                                   "holds an input ({tmp}/held/ok.yaml) of this run"),
    "overwrite-user-folder": (f"{OUT} --output {{tmp}}/user-folder --overwrite",
                              "was not written by obert: delete it yourself"),
    "demo-over-user-folder": ("demo --output {tmp}/user-folder", "was not written by obert"),
    "resume-into-user-folder": (f"{PRUNE} --resume --output {{tmp}}/user-folder",
                                "was not written by obert"),
    "output-dangling-link": (f"{OUT} --output {{tmp}}/dangling",
                             "is a link to {tmp}/nowhere, which does not exist"),
    "overwrite-through-link": (f"{OUT} --output {{tmp}}/link-to-empty --overwrite",
                               "is a link to {tmp}/empty"),
    "output-name-too-long": (f"{OUT} --output {{tmp}}/{'n' * 300}",
                             "the name is too long for the file system (300 bytes"),
    "checkpoints-path-is-a-file": (f"{PRUNE} --output {{tmp}}/ck",
                                   "the checkpoints folder {tmp}/ck.checkpoints is a file"),
    "checkpoints-folder-not-obert": (f"{PRUNE} --output {{tmp}}/ck2 --overwrite",
                                     "{tmp}/ck2.checkpoints was not written by obert"),
    "export-overwrite-not-onnx": ("export --model {ft} --output {tmp}/ok.csv --overwrite",
                                  "--output {tmp}/ok.csv was not written by obert"),
    "export-overwrite-input": ("export --model {ft} --task sst2 --validation-file {tmp}/ok.csv "
                               "--output {tmp}/ok.csv --overwrite", "is an input of this run"),
    # -- numbers that are not finite, models checked against each other (issue 24) -------------
    # @@ nan-and-models
    "nan-weights-finetune": ("finetune --model {tmp}/nan --task sst2 --data-dir {glue} "
                             "--max-train-samples 16 --output {out}", NAN_IN_QUERY),
    "nan-weights-oneshot": ("oneshot --model {tmp}/nan --task sst2 --data-dir {glue} "
                            "--sparsity 0.5 --output {out}", NAN_IN_QUERY),
    "nan-weights-evaluate": ("evaluate --model {tmp}/nan --task sst2 --data-dir {glue}",
                             NAN_IN_QUERY),
    "nan-weights-export": ("export --model {tmp}/nan --output {out}", NAN_IN_QUERY),
    "nan-weights-bench": ("bench --model {tmp}/nan --repeats 1", NAN_IN_QUERY),
    "inf-weights-evaluate": ("evaluate --model {tmp}/inf --task sst2 --data-dir {glue}",
                             "model {tmp}/inf has 1 non-finite value"),
    "inf-weights-teacher": (f"{PRUNE} --teacher {{tmp}}/inf --output {{out}}",
                            "model {tmp}/inf has 1 non-finite value"),
    "teacher-other-vocab": (f"{PRUNE} --teacher {{tmp}}/vocab-sst2 --output {{out}}",
                            "has a vocabulary of 1,000 tokens and the student"),
    "teacher-other-task": (f"{PRUNE} --teacher {{tmp}}/mnli3 --output {{out}}",
                           "the teacher {tmp}/mnli3 was fine-tuned on mnli"),
    "evaluate-other-task-head": ("evaluate --model {tmp}/rte --task sst2 --data-dir {glue}",
                                 "was fine-tuned on rte (its config's finetuning_task), not sst2"),
    "evaluate-3-label-head": ("evaluate --model {tmp}/labels3 --task sst2 --data-dir {glue}",
                              "has a 3-label head, but sst2 has 2 labels"),
    "export-other-task-head": ("export --model {tmp}/mnli3 --output {out} --task sst2 "
                               "--data-dir {glue}", "was fine-tuned on mnli"),
    "bench-other-task-head": ("bench --model {tmp}/rte --task sst2 --data-dir {glue} "
                              "--repeats 1", "was fine-tuned on rte"),
    "bench-roberta-seq-len": ("bench --model {tmp}/roberta --seq-len 513 --repeats 1",
                              "--seq-len 513 exceeds the 512 positions of this roberta"),
    "gpt2-finetune": ("finetune --model {tmp}/gpt2 --task sst2 --data-dir {glue} --output {out}",
                      "is a decoder-only gpt2 model"),
    "gpt2-oneshot": ("oneshot --model {tmp}/gpt2 --task sst2 --data-dir {glue} --sparsity 0.5 "
                     "--output {out}", "is a decoder-only gpt2 model"),
    "gpt2-evaluate": ("evaluate --model {tmp}/gpt2 --task sst2 --data-dir {glue}",
                      "is a decoder-only gpt2 model"),
    "gpt2-export": ("export --model {tmp}/gpt2 --output {out}", "is a decoder-only gpt2 model"),
    "gpt2-bench": ("bench --model {tmp}/gpt2 --repeats 1", "is a decoder-only gpt2 model"),
    "seed-2-to-the-32": ("finetune --model {model} --task sst2 --seed 4294967296 --output {out}",
                         "--seed: 4294967296 must be below 4294967296"),
    "seed-negative": ("finetune --model {model} --task sst2 --seed -1 --output {out}",
                      "--seed: -1 must be ≥ 0"),
    "fisher-block-size-huge": (f"{ONESHOT} --fisher-block-size 200000 --output {{out}}",
                               "--fisher-block-size 200000 is larger than the largest target"),
    "damp-tiny": (f"{ONESHOT} --damp 1e-300 --output {{out}}", "--damp 1e-300 is below 1e-12"),
    # a hub id with no network (or HF_HUB_OFFLINE): one line from every command, in seconds
    "hub-id-evaluate": ("evaluate --model no-org/no-model --task sst2 --data-dir {glue}",
                        NO_HUB_MODEL),
    "hub-id-oneshot": ("oneshot --model no-org/no-model --task sst2 --data-dir {glue} "
                       "--sparsity 0.5 --output {out}", NO_HUB_MODEL),
    "hub-id-teacher": (f"{PRUNE} --teacher no-org/no-model --output {{out}}", NO_HUB_MODEL),
    "hub-id-export": ("export --model no-org/no-model --output {out}", NO_HUB_MODEL),
    "hub-id-bench": ("bench --model no-org/no-model --repeats 1", NO_HUB_MODEL),
    "hub-id-serve": ("serve --model no-org/no-model --port 0", NO_HUB_MODEL),
    "hub-id-drop-layers": ("drop-layers --model no-org/no-model --layers 1 --output {out}",
                           NO_HUB_MODEL),
    "hub-dataset-mlm": (f"{MLM} --dataset no-org/no-data --output {{out}}",
                        "cannot load the hub dataset 'no-org/no-data'"),
    "hub-dataset-mlm-streaming": (f"{MLM} --dataset no-org/no-data --streaming "
                                  "--max-train-samples 8 --output {out}",
                                  "the hub dataset 'no-org/no-data'"),
    # -- rows: one typed schema per input format (issue 24) -----------------------------------
    # @@ row-schemas
    "glue-jsonl-text-null": (f"{GLUE_TRAIN} {{tmp}}/glue-null.jsonl --output {{out}}",
                             "glue-null.jsonl, line 2: sentence is missing"),
    "glue-jsonl-text-number": (f"{GLUE_TRAIN} {{tmp}}/glue-number.jsonl --output {{out}}",
                               "glue-number.jsonl, line 2: sentence is a number (5), not text"),
    "glue-jsonl-text-list": (f"{GLUE_TRAIN} {{tmp}}/glue-list.jsonl --output {{out}}",
                             "glue-list.jsonl, line 2: sentence is a list (['dull', 'film']), "
                             "not text"),
    "glue-jsonl-text-absent": (f"{GLUE_TRAIN} {{tmp}}/glue-absent.jsonl --output {{out}}",
                               "glue-absent.jsonl, line 3: sentence is missing"),
    "glue-jsonl-not-utf8": (f"{GLUE_TRAIN} {{tmp}}/glue-latin1.jsonl --output {{out}}",
                            "glue-latin1.jsonl, line 2: the file is not UTF-8 text"),
    "glue-tsv-text-blank": (f"{GLUE_TRAIN} {{tmp}}/glue-blank.tsv --output {{out}}",
                            "glue-blank.tsv, line 3: sentence is blank"),
    "glue-parquet-text-number": (f"{GLUE_TRAIN} {{tmp}}/glue-number.parquet --output {{out}}",
                                 "glue-number.parquet, row 1: sentence is a number (5), not text"),
    "glue-csv-label-word": (f"{GLUE_TRAIN} {{tmp}}/glue-label-word.csv --output {{out}}",
                            "glue-label-word.csv, line 3: label is text ('positive'), not a "
                            "whole number"),
    "glue-validation-file-label-5": (f"{GLUE_TRAIN} {{tmp}}/ok.csv --validation-file "
                                     "{tmp}/label5.csv --output {out}",
                                     "label5.csv, line 3: label 5 is not one of 0, 1"),
    "stsb-score-over-5-train": (f"{STSB} --train-file {{tmp}}/stsb-high.jsonl --output {{out}}",
                                "stsb-high.jsonl, line 2: label 5.5 is outside 0..5"),
    "stsb-score-negative-train": (f"{STSB} --train-file {{tmp}}/stsb-negative.csv --output "
                                  "{out}", "stsb-negative.csv, line 3: label -1 is outside 0..5"),
    "stsb-score-over-5-validation": (f"{STSB} --train-file {{tmp}}/stsb-ok.jsonl "
                                     "--validation-file {tmp}/stsb-high.jsonl --output {out}",
                                     "stsb-high.jsonl, line 2: label 5.5 is outside 0..5"),
    "stsb-score-negative-validation": ("evaluate --model {ft} --task stsb --validation-file "
                                       "{tmp}/stsb-negative.csv",
                                       "stsb-negative.csv, line 3: label -1 is outside 0..5"),
    "squad-question-null": (f"{SQUAD_TRAIN} {{tmp}}/sq-question-null.json --output {{out}}",
                            "sq-question-null.json, line 21, article 1, paragraph 1, question 2 "
                            "(id 'q1'): question is missing"),
    "squad-context-number": (f"{SQUAD_TRAIN} {{tmp}}/sq-context-number.json --output {{out}}",
                             "sq-context-number.json, line 8, article 1, paragraph 1: context "
                             "is a number (5), not text"),
    "squad-answer-start-text": (f"{SQUAD_TRAIN} {{tmp}}/sq-start-text.json --output {{out}}",
                                "sq-start-text.json, line 21, article 1, paragraph 1, question 2 "
                                "(id 'q1'): answers[0].answer_start is text ('13'), not a whole "
                                "number"),
    "squad-answer-start-negative": (f"{SQUAD_TRAIN} {{tmp}}/sq-start-negative.json --output "
                                    "{out}", "sq-start-negative.json, line 21, article 1, "
                                    "paragraph 1, question 2 (id 'q1'): answers[0].answer_start "
                                    "-1 must be ≥ 0"),
    "squad-answer-start-past-context": (f"{SQUAD_TRAIN} {{tmp}}/sq-start-past.json --output "
                                        "{out}", "sq-start-past.json, line 21, article 1, "
                                        "paragraph 1, question 2 (id 'q1'): answers[0]."
                                        "answer_start 40 is past the end of the context (18 "
                                        "characters)"),
    "squad-answer-not-at-start": (f"{SQUAD_TRAIN} {{tmp}}/sq-wrong-text.json --output {{out}}",
                                  "sq-wrong-text.json, line 21, article 1, paragraph 1, question "
                                  "2 (id 'q1'): answers[0].text 'fine' is not at answer_start 4: "
                                  "the context there reads 'film'"),
    "squad-duplicate-id-validation": ("finetune --model {model} --task squad --train-file "
                                      "{tmp}/ok-squad.json --validation-file "
                                      "{tmp}/sq-duplicate-id.json --max-seq-length 128 "
                                      "--doc-stride 32 --output {out}",
                                      "sq-duplicate-id.json, line 21, article 1, paragraph 1, "
                                      "question 2 (id 'q0'): id 'q0' is the id of an earlier "
                                      "question too (line 11,"),
    "winogrande-option-number": ("finetune --model {model} --task winogrande --train-file "
                                 "{tmp}/wg-option-number.jsonl --output {out}",
                                 "wg-option-number.jsonl, line 1: option1 is a number (5), not "
                                 "text"),
    "winogrande-answer-3": ("finetune --model {model} --task winogrande --train-file "
                            "{tmp}/wg-answer-3.jsonl --output {out}",
                            "wg-answer-3.jsonl, line 1: answer '3' is not 1 or 2"),
    "csqa-stem-number": ("finetune --model {model} --task commonsense_qa --train-file "
                         "{tmp}/csqa-stem-number.jsonl --output {out}",
                         "csqa-stem-number.jsonl, line 1: question.stem is a number (5), not "
                         "text"),
    "csqa-choice-text-null": ("finetune --model {model} --task commonsense_qa --train-file "
                              "{tmp}/csqa-choice-null.jsonl --output {out}",
                              "csqa-choice-null.jsonl, line 1: question.choices[1].text is "
                              "missing"),
    "mc-choices-text": (f"{MC} {{tmp}}/mc-choices-text.jsonl",
                        "mc-choices-text.jsonl, line 1: choices is text ('a b'), not a list"),
    "mc-choice-number": (f"{MC} {{tmp}}/mc-choice-number.jsonl",
                         "mc-choice-number.jsonl, line 1: choices[1] is a number (3), not text"),
    "mc-validation-file-unanswered": (f"{MC} {{tmp}}/mc-ok.jsonl --validation-file "
                                      "{tmp}/mc-unanswered.jsonl",
                                      "mc-unanswered.jsonl, line 2: label is missing"),
    "mlm-jsonl-text-number": (f"{MLM} --train-file {{tmp}}/mlm-number.jsonl --output {{out}}",
                              "mlm-number.jsonl, line 1: text is a number (5), not text"),
    "mlm-validation-file-without-text": (f"{MLM} --train-file {{tmp}}/ok.txt --validation-file "
                                         "{tmp}/no-text.jsonl --output {out}",
                                         "no-text.jsonl, line 1: text is missing"),
    # -- recipes and settings that would be ignored (issue 24) ---------------------------------
    # @@ recipes-and-settings
    "recipe-duplicate-key": (PRUNE.replace("ok.yaml", "dup.yaml") + " --output {out}",
                             "key 'epochs' is given twice on lines 1 and 6: keep one"),
    "recipe-unknown-key-typo": (PRUNE.replace("ok.yaml", "typo.yaml") + " --output {out}",
                                "recipe key distilation is unknown: did you mean distillation?"),
    "recipe-teacher-and-flag": (PRUNE.replace("ok.yaml", "teacher.yaml") + " --teacher "
                                "{ft} --output {out}", "the teacher is given twice"),
    "recipe-fisher-block-zero": (PRUNE.replace("ok.yaml", "block0.yaml") + " --output "
                                 "{out}", "pruning.fisher.block_size = 0 must be a positive"),
    "recipe-include-typo": (PRUNE.replace("ok.yaml", "include-typo.yaml") + " --output "
                            "{out}", "include pattern 'clasifier' (--include, recipe "
                            "targets.include) matches no Linear"),
    "oneshot-include-typo": (f"{ONESHOT} --include clasifier --output {{out}}",
                             "include pattern 'clasifier'"),
    "oneshot-exclude-typo": (f"{ONESHOT} --exclude qurey --output {{out}}",
                             "exclude pattern 'qurey'"),
    "prune-fisher-memory-magnitude": (f"{PRUNE} --max-fisher-memory 1 --output {{out}}",
                                      "--max-fisher-memory is not used"),
    "prune-teacher-without-kd": (PRUNE.replace("ok.yaml", "no-kd.yaml") + " --teacher "
                                 "{ft} --output {out}", "--teacher is not used"),
    "streaming-with-train-file": (f"{MLM} --train-file {{tmp}}/ok.txt --dataset wikitext "
                                  "--streaming --max-train-samples 4 --output {out}",
                                  "--streaming streams a hub --dataset, but --train-file"),
    "mlm-data-dir": (f"{MLM} --data-dir {{tmp}} --output {{out}}", "--task mlm reads no --data-dir"),
    "mlm-dataset-config-without-dataset": (f"{MLM} --train-file {{tmp}}/ok.txt --dataset-config "
                                           "en --output {out}",
                                           "--dataset-config is the config of a hub --dataset"),
    "dataset-config-on-sst2": ("finetune --model {model} --task sst2 --data-dir {glue} "
                               "--dataset-config winogrande_l --output {out}",
                               "--dataset-config is for winogrande (its size) and mlm"),
    "evaluate-train-file-on-dev": ("evaluate --model {ft} --task sst2 --train-file {tmp}/ok.csv "
                                   "--validation-file {tmp}/ok.csv",
                                   "--train-file is read by --split train only"),
    "export-data-dir-without-task": ("export --model {ft} --output {out} --data-dir {glue}",
                                     "--data-dir is read only with --task"),
    "bench-validation-file-without-task": ("bench --model {ft} --validation-file {tmp}/ok.csv "
                                           "--repeats 1", "--validation-file is read only with "
                                           "--task"),
    "oneshot-magnitude-dataset": (f"{ONESHOT} --method magnitude --dataset wikitext --output "
                                  "{out}", "--dataset and --streaming are for --task mlm"),
    "oneshot-magnitude-fisher-flags": (f"{ONESHOT} --method magnitude --num-grads 64 --damp 1e-6 "
                                       "--output {out}", "--num-grads, --damp are not used: "
                                       "--method magnitude computes no Fisher"),
    "split-articles-on-sst2": (f"{ONESHOT} --method magnitude --split-articles 2 --output {{out}}",
                               "--split-articles is for --task squad only, not sst2"),
    "export-int8-foreign-scales": ("export --model {tmp}/foreign-scales --output {out} --int8",
                                   "quantization.safetensors names none of the model's INT8 "
                                   "Linears (1 scales, first: nope"),
}

OK_RECIPE = """epochs: 1
batch_size: 16
max_seq_length: 32
pruning: {method: magnitude, init_sparsity: 0.5, final_sparsity: 0.5, start_epoch: 0.5,
          end_epoch: 0.5, update_frequency: 1}
"""


def _files(tmp: Path, model: Path) -> None:
    """The bad (and a few good) inputs the table names."""
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "train-only" / "SST-2").mkdir(parents=True, exist_ok=True)
    (tmp / "train-only" / "SST-2" / "train.tsv").write_text("sentence\tlabel\nfine film\t1\n")
    (tmp / "text.csv").write_text("text,label\nfine film,1\ndull film,0\n")
    (tmp / "ok.csv").write_text("sentence,label\nfine film,1\ndull film,0\n")
    (tmp / "label5.csv").write_text("sentence,label\nfine film,1\ndull film,5\n")
    (tmp / "label-neg.csv").write_text("sentence,label\nfine film,1\ndull film,-1\n")
    (tmp / "no-label.csv").write_text("sentence,label\nfine film,1\ndull film,\n")
    (tmp / "header.csv").write_text("sentence,label\n")
    (tmp / "header.tsv").write_text("sentence\tlabel\n")
    (tmp / "bad.jsonl").write_text('{"sentence": "fine film", "label": 1}\n{"sentence": \n')
    (tmp / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (tmp / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9 film\t1\n".encode("latin-1"))
    (tmp / "squad-dev.json").write_text('{"data": [{"title": "x", "text": "no paragraphs"}]}')
    (tmp / "ok-squad.json").write_text(
        '{"data": [{"title": "t", "paragraphs": [{"context": "The film was fine.", "qas": '
        '[{"id": "1", "question": "How was the film?", "answers": [{"text": "fine", '
        '"answer_start": 13}]}]}]}]}')
    (tmp / "a-file").write_text("not a folder")
    (tmp / "empty.txt").write_text("")
    (tmp / "blank.txt").write_text("\n  \n\n")
    (tmp / "ok.txt").write_text("The film was fine.\nThe book was better.\n")
    (tmp / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp / "no-text.jsonl").write_text('{"sentence": "fine film"}\n')
    (tmp / "not-json.jsonl").write_text('{"text": "fine film"}\n{"text": \n')
    mc = ['{"question": "q", "choices": ["a", "b", "c"], "label": 0}',
          '{"question": "q", "choices": ["a", "b"], "label": 0}',
          '{"question": "q", "choices": ["a", "b", "c"], "label": 3}',
          '{"question": "q", "choices": ["a", "", "c"], "label": 0}',
          '{"question": "q", "choices": ["' + "long " * 40 + '", "b"], "label": 0}',
          '{"question": "q", "choices": ["a", "b", "c"]}']
    for name, lines in (("mc-ok", [0, 0]), ("mc-count", [0, 1]), ("mc-label", [2]),
                        ("mc-empty", [0, 3]), ("mc-long", [4]), ("mc-unanswered", [0, 5])):
        (tmp / f"{name}.jsonl").write_text("".join(mc[i] + "\n" for i in lines))
    (tmp / "mc-not-json.jsonl").write_text(mc[0] + "\n" + '{"question": \n')
    (tmp / "mc-null.jsonl").write_text('{"question": null, "choices": ["a", "b"], "label": 0}\n')
    (tmp / "mc-nochoice.csv").write_text("question,label\nq,0\n")
    wg = '{"sentence": "%s", "option1": "a", "option2": "b", "answer": "1"}\n'
    (tmp / "wg-noblank.jsonl").write_text(wg % "no blank here")
    (tmp / "wg-twoblanks.jsonl").write_text(wg % "I saw _." + wg % "_ saw _.")
    (tmp / "csqa-bad.jsonl").write_text(
        '{"answerKey": "F", "question": {"stem": "q", "choices": [{"label": "A", "text": "x"}, '
        '{"label": "B", "text": "y"}]}}\n')
    (tmp / "gpt2").mkdir(exist_ok=True)
    (tmp / "gpt2" / "config.json").write_text('{"model_type": "gpt2", "n_positions": 128}')
    (tmp / "ok.yaml").write_text(OK_RECIPE)
    (tmp / "empty.yaml").write_text("# nothing but a comment\n")
    (tmp / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp / "bad-key.yaml").write_text("pruning: {final_sparsity: 1.5}\n")
    (tmp / "keep9.yaml").write_text(OK_RECIPE + "layers: {keep: [0, 9]}\n")
    (tmp / "qat0.yaml").write_text(OK_RECIPE + "quantization: {epochs: 0}\n")
    (tmp / "qat-cyclic.yaml").write_text(OK_RECIPE + "quantization: {lr: {schedule: "
                                         "cyclic_linear}}\n")
    broken = tmp / "broken-config"
    broken.mkdir(exist_ok=True)
    for f in model.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text('{"model_type": "bert", ')
    # @@ files-outputs-and-fs
    from obert.io import mark_output

    for name in ("teacher", "held"):  # obert's outputs (marked) that are this run's inputs
        (tmp / name).mkdir(exist_ok=True)
        mark_output(tmp / name, "finetune")
    (tmp / "held" / "ok.csv").write_text("sentence,label\nfine film,1\ndull film,0\n")
    (tmp / "held" / "ok.yaml").write_text(OK_RECIPE)
    (tmp / "user-folder").mkdir(exist_ok=True)
    (tmp / "user-folder" / "notes.txt").write_text("the user's, not obert's")
    for link, target in (("dangling", "nowhere"), ("link-to-empty", "empty")):
        if not (tmp / link).is_symlink():
            (tmp / link).symlink_to(tmp / target)
    (tmp / "ck.checkpoints").write_text("a file where prune keeps its checkpoints")
    (tmp / "ck2.checkpoints").mkdir(exist_ok=True)
    (tmp / "ck2.checkpoints" / "notes.txt").write_text("the user's")
    # @@ files-nan-and-models
    # Tiny models that must be refused, from the tiny BERT's files: the vocabulary cut to 1,000
    # rows keeps each copy ~150 KB (each is refused before a token is embedded).
    import safetensors.torch as st

    base_weights = st.load_file(model / "model.safetensors")
    base_weights["bert.embeddings.word_embeddings.weight"] = \
        base_weights["bert.embeddings.word_embeddings.weight"][:1000].clone()
    base_config = {**json.loads((model / "config.json").read_text()), "vocab_size": 1000}
    query = "bert.encoder.layer.0.attention.self.query.weight"

    def variant(name: str, config: dict, change=None) -> None:
        folder = tmp / name
        folder.mkdir(exist_ok=True)
        for f in model.iterdir():
            if f.is_file() and f.name not in ("model.safetensors", "config.json"):
                (folder / f.name).write_bytes(f.read_bytes())
        weights = {k: v.clone() for k, v in base_weights.items()}
        if change is not None:
            change(weights)
        st.save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({**base_config, **config}))

    variant("nan", {}, lambda w: w[query].view(-1)[5].fill_(float("nan")))
    variant("inf", {}, lambda w: w[query].view(-1)[5].fill_(float("-inf")))
    variant("vocab-sst2", {"finetuning_task": "sst2"})
    variant("rte", {"finetuning_task": "rte"})

    def three_labels(w: dict) -> None:
        for k in ("classifier.weight", "classifier.bias"):
            w[k] = w[k][[0, 1, 0]].clone()

    labels3 = {"id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2}}
    variant("labels3", labels3, three_labels)
    variant("mnli3", {**labels3, "finetuning_task": "mnli"}, three_labels)
    (tmp / "roberta").mkdir(exist_ok=True)  # its config is all bench reads before refusing
    (tmp / "roberta" / "config.json").write_text(json.dumps(
        {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1,
         "architectures": ["RobertaForSequenceClassification"]}))
    # @@ files-row-schemas
    ok_row = '{"sentence": "fine film", "label": 1}\n'
    for name, row in (("null", "null"), ("number", "5"), ("list", '["dull", "film"]')):
        (tmp / f"glue-{name}.jsonl").write_text(ok_row + f'{{"sentence": {row}, "label": 0}}\n')
    (tmp / "glue-absent.jsonl").write_text(ok_row + "\n" + '{"label": 0}\n')
    (tmp / "glue-latin1.jsonl").write_bytes(ok_row.encode() + '{"sentence": "caf\xe9", '
                                            '"label": 1}\n'.encode("latin-1"))
    (tmp / "glue-blank.tsv").write_text("sentence\tlabel\nfine film\t1\n  \t0\n")
    (tmp / "glue-label-word.csv").write_text("sentence,label\nfine film,1\ndull film,positive\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": [5], "label": [1]}), tmp / "glue-number.parquet")
    sts = '{{"sentence1": "a man sings", "sentence2": "a man is singing", "label": {}}}\n'
    (tmp / "stsb-ok.jsonl").write_text(sts.format(4.5) + sts.format(0))
    (tmp / "stsb-high.jsonl").write_text(sts.format(3.2) + sts.format(5.5))
    (tmp / "stsb-negative.csv").write_text("sentence1,sentence2,label\na man,a man,4.5\n"
                                           "a cat,a dog,-1\n")

    def squad(context="The film was fine.", question="How was the film?", start=13,
              text="fine", qid="q1") -> str:  # two questions; the second one's id: line 21
        qas = [{"id": "q0", "question": "What was fine?",
                "answers": [{"text": "The film", "answer_start": 0}]},
               {"id": qid, "question": question,
                "answers": [{"text": text, "answer_start": start}]}]
        return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
            {"context": context, "qas": qas}]}]}, indent=1)

    for name, change in (("question-null", {"question": None}), ("context-number", {"context": 5}),
                         ("start-text", {"start": "13"}), ("start-negative", {"start": -1}),
                         ("start-past", {"start": 40}), ("wrong-text", {"start": 4}),
                         ("duplicate-id", {"qid": "q0"})):
        (tmp / f"sq-{name}.json").write_text(squad(**change))
    (tmp / "wg-option-number.jsonl").write_text(
        '{"sentence": "I saw _.", "option1": 5, "option2": "b", "answer": "1"}\n')
    (tmp / "wg-answer-3.jsonl").write_text(
        '{"sentence": "I saw _.", "option1": "a", "option2": "b", "answer": "3"}\n')
    csqa = ('{"answerKey": "A", "question": {"stem": %s, "choices": [{"label": "A", "text": '
            '"x"}, {"label": "B", "text": %s}]}}\n')
    (tmp / "csqa-ok.jsonl").write_text(csqa % ('"q"', '"y"'))
    (tmp / "csqa-stem-number.jsonl").write_text(csqa % ("5", '"y"'))
    (tmp / "csqa-choice-null.jsonl").write_text(csqa % ('"q"', "null"))
    (tmp / "mc-choices-text.jsonl").write_text('{"question": "q", "choices": "a b", "label": 0}\n')
    (tmp / "mc-choice-number.jsonl").write_text(
        '{"question": "q", "choices": ["a", 3], "label": 0}\n')
    (tmp / "mlm-number.jsonl").write_text('{"text": 5}\n')
    # @@ files-recipes-and-settings
    (tmp / "dup.yaml").write_text(OK_RECIPE + "epochs: 2\n")  # OK_RECIPE has 5 lines
    (tmp / "typo.yaml").write_text(OK_RECIPE + "distilation: {hardness: 1.0}\n")
    (tmp / "teacher.yaml").write_text(OK_RECIPE + "distillation: {teacher: some/teacher}\n")
    (tmp / "no-kd.yaml").write_text(OK_RECIPE + "distillation: {hardness: 0.0}\n")
    (tmp / "include-typo.yaml").write_text(OK_RECIPE + "targets: {include: [clasifier]}\n")
    (tmp / "block0.yaml").write_text(OK_RECIPE.replace("magnitude", "obert").replace(
        "update_frequency: 1}", "update_frequency: 1, fisher: {block_size: 0}}"))
    foreign = tmp / "foreign-scales"  # the model's files, beside another model's QAT scales
    foreign.mkdir(exist_ok=True)
    for f in model.iterdir():
        if f.is_file() and f.stat().st_size >= 1 << 20:
            (foreign / f.name).symlink_to(f)  # the weights: read, never written
        elif f.is_file():
            (foreign / f.name).write_bytes(f.read_bytes())
    import torch
    from safetensors.torch import save_file

    save_file({"nope.weight_scale": torch.ones(4)}, str(foreign / "quantization.safetensors"))


def _argv(template: str, fields: dict) -> list[str]:
    return [part.format(**fields) for part in template.split()] + ["--quiet"]


def _snapshot(fields: dict) -> dict:
    """Every file under the scratch folder and the fixture models: its bytes' digest (scratch)
    or size and mtime (models, which are large), and every folder; a failed command changes
    none of them."""
    seen: dict = {}
    for key in ("tmp", "model", "ft", "mc"):
        root = Path(fields[key])
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not path.is_file():
                seen[str(path)] = "link" if path.is_symlink() else "dir"
            elif key == "tmp" and path.stat().st_size < 1 << 20:
                seen[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            else:
                st = path.stat()
                seen[str(path)] = (st.st_size, st.st_mtime_ns)
    return seen


def _assert_one_error_line(stderr: str, expected: str) -> None:
    lines = stderr.strip("\n").splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("obert: error:"), stderr
    assert expected in lines[0], lines[0]


@pytest.fixture
def fields(tmp_path, tiny_model_dir, tiny_finetuned_dir, minilm_path, glue_dir,
           tiny_mc_dir) -> dict:
    _files(tmp_path, tiny_model_dir)
    return {"model": tiny_model_dir, "ft": tiny_finetuned_dir, "minilm": minilm_path,
            "mc": tiny_mc_dir,
            "glue": glue_dir, "tmp": tmp_path, "out": tmp_path / "out"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, fields: dict, capsys, monkeypatch) -> None:
    monkeypatch.chdir(fields["tmp"])  # "demo --output out" lands here, and must not
    template, expected = CASES[case]
    argv = _argv(template, fields)
    before = _snapshot(fields)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    _assert_one_error_line(captured.err, expected.format(**fields))
    assert captured.out == ""
    assert not fields["out"].exists()
    # no output, no .out.tmp-*, no checkpoints; and no file that was there changed or went away
    assert _snapshot(fields) == before


def test_table_size() -> None:
    assert len(CASES) >= 50  # stated in the closing note; grows as inputs are added


@pytest.mark.slow  # trains or starts processes: make test runs it, test-fast does not
@pytest.mark.parametrize("case", ["sparsity-one", "label-out-of-range-eval", "hub-id-offline"])
def test_bad_input_subprocess(case: str, fields: dict) -> None:
    """The real entry point: no traceback, exactly one line on stderr, exit code 2, in seconds."""
    template, expected = CASES[case]
    argv = _argv(template, fields)
    if case == "sparsity-one":
        argv.remove("--quiet")  # progress bars must not matter when failing early
    proc = subprocess.run([sys.executable, "-m", "obert", *argv], capture_output=True,
                          text=True, timeout=300, cwd=fields["tmp"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    _assert_one_error_line(proc.stderr, expected)
    assert not fields["out"].exists()
