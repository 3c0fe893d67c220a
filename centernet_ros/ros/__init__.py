"""ROS 2 layer of centernet_ros: message conversions, the detector node and the demo tools.

This is the only sub-package that imports rclpy; submodules import it themselves, so
importing `centernet_ros.ros` alone stays cheap and works without ROS installed.
"""
