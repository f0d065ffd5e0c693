# Architecture patterns: each method's chosen backbone as a row of blocks (rule architectures)
