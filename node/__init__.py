"""swarmlm.node"""
