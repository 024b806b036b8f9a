"""The wire and MPI: the payload format of a client's upload, and the only module that calls MPI."""
