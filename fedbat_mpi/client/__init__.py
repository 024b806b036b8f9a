"""The client side: what a rank does for the clients it hosts.

Models and their binarization, the algorithms (each a local step, all trained by one loop for a group of clients
at once), batching of a client's data, the device a rank trains on, and evaluation of the global model.
"""
