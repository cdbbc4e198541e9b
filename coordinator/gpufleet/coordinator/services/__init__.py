"""Thin gRPC servicers: decode the request, call the coordinator's handlers, map errors in one place."""
