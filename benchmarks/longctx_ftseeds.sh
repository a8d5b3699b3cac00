#!/bin/bash
# Kept so the commands of docs/LOG.md (session 11) still run: `bash benchmarks/longctx_study.sh ftseeds` is the driver.
exec bash "$(dirname "$0")/longctx_study.sh" ftseeds "$@"
