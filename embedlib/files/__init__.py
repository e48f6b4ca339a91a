"""What the user asked for, and reading one file of it: the first stage, knowing nothing of views or roots.

Owns: `inputs` (a folder, file, manifest, prefix or glob turned into rows, paths taken literally, manifests as
text, checked whole before any run starts), `sources` (bounded reads, sha256, format sniffing, local paths and
storage URIs), `corpus` (this machine's executables labelled by dpkg, and manifest writing).
May import: errors, config, schema.
"""
