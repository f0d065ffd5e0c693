# Ranking quality: does the supernet rank architectures as standalone training does? (rule ranking)
