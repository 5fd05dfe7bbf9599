"""placeholder"""
import argparse

def add_parser(sub):
    pass
