"""swarmlm.node.client"""
