#!/usr/bin/python3
# Runs Debian 12's mkosi 14 unmodified, except for one runtime patch needed on kernels
# built without a GPT partition parser (CONFIG_EFI_PARTITION unset, as on this VM):
# after rewriting the partition table mkosi 14 re-adds every partition with BLKPG and
# then calls BLKRRPART, which on such a kernel drops all partitions and finds none.
# The BLKPG re-add alone is sufficient, so BLKRRPART is skipped.
import sys
sys.argv[0] = "mkosi"
import mkosi.backend
mkosi.backend.block_reread_partition_table = lambda fd: None
from mkosi.__main__ import main
main()
