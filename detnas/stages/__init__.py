"""Pipeline stages: each is one ``python -m detnas <stage>`` command; paths in, paths out."""
