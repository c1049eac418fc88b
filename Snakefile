# Region-Aware MedCLIP: staged offline pipeline over HDF5 shards. See README.md and ../shared/DESIGN.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    shard=r"\d{5}",


include: "workflow/rules/synthesize.smk"
include: "workflow/rules/pretraining.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/parse_reports.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/crop.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


localrules:
    all,
    train,


# The whole comparison: every run of evaluate.runs trained, evaluated against the baseline, and pictured.
rule all:
    input:
        rules.evaluate.output,
        rules.visualize.output,
    default_target: True
