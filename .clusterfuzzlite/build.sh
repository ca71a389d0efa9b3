#!/bin/bash -eu
# ClusterFuzzLite build: the same script as the OSS-Fuzz project (see ci/oss-fuzz/build.sh).
exec bash "$SRC/p2m-iommu-fuzz/ci/oss-fuzz/build.sh" "$@"
