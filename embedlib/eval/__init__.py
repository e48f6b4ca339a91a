"""Family retrieval against training-free baselines: the protocol (`retrieval`: known and unseen families, the
other-programs mode), `metrics` (P@1, P@10, MAP@R), `digests` (TLSH and ssdeep scoring), the evaluate job's
library (`evaluation`) and its `plots`.
May import: everything below it (files, views, root, model, train); nothing imports it but jobs and studies.
"""
