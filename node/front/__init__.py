"""swarmlm.node.front"""
