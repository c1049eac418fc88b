# Region-Aware MedCLIP: staged offline pipeline over HDF5 shards. See README.md and ../shared/DESIGN.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    shard=r"\d{5}",


include: "workflow/rules/synthesize.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/parse_reports.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/crop.smk"
include: "workflow/rules/teacher.smk"


# The stages built so far; `train` joins `all` when the trainer lands.
rule all:
    input:
        rules.stage_normalize.input,
        rules.stage_parse_reports.input,
        rules.stage_crop.input,
        teacher_weights(),
    default_target: True
