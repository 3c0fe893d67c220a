"""Demo: the bundled video clip played as a camera, and the detector on it.

    ros2 launch centernet_ros demo.launch.py
    ros2 launch centernet_ros demo.launch.py video:=/path/to/clip.mp4 loop:=true device:=cuda

Topics: /demo/camera/image_raw (video), /demo/camera/detections (vision_msgs/Detection2DArray),
/demo/camera/detections_image (annotated, for rviz), /label_info, /diagnostics. Both nodes read
``params_file`` (default: the package's config/demo.yaml); the detector is started through
detect.launch.py with the same file.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, ThisLaunchFileDir
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'centernet_ros'


def default_params_file():
    """config/demo.yaml of the installed package, or of the source tree this file is in."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(get_package_share_directory(PACKAGE), 'config', 'demo.yaml')
        if os.path.isfile(path):
            return path
    except Exception:  # package not installed: running from the source tree
        pass
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config', 'demo.yaml')


def _video_publisher(context):
    overrides = {}
    video = LaunchConfiguration('video').perform(context)
    if video:
        overrides['path'] = ParameterValue(video, value_type=str)
    rate = LaunchConfiguration('rate').perform(context)
    if rate:
        overrides['rate'] = float(rate)
    loop = LaunchConfiguration('loop').perform(context).lower()
    if loop:
        if loop not in ('true', 'false'):
            raise ValueError(f"launch argument loop:={loop!r}: expected true or false")
        overrides['loop'] = loop == 'true'
    parameters = [LaunchConfiguration('params_file').perform(context)]
    if overrides:
        parameters.append(overrides)
    return [
        Node(
            package=PACKAGE,
            executable='centernet-video-publisher',
            name='video_publisher',
            parameters=parameters,
            output='screen',
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    params_file = LaunchConfiguration('params_file')
    detector = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([ThisLaunchFileDir(), 'detect.launch.py'])),
        launch_arguments={
            'params_file': params_file,
            'weights': LaunchConfiguration('weights'),
            'device': LaunchConfiguration('device'),
            'input_size': LaunchConfiguration('input_size'),
            'score_threshold': LaunchConfiguration('score_threshold'),
        }.items(),
    )
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params_file(),
                              description='ROS parameters file of both nodes'),
        DeclareLaunchArgument('video', default_value='',
                              description='video file (empty: from params_file; bundled slow_traffic_small.mp4)'),
        DeclareLaunchArgument('rate', default_value='',
                              description='frames per second; 0 = the file rate; < 0 = as fast as possible (empty: from params_file)'),
        DeclareLaunchArgument('loop', default_value='', description='true | false (empty: from params_file)'),
        DeclareLaunchArgument('weights', default_value='', description='model file (empty: from params_file)'),
        DeclareLaunchArgument('device', default_value='', description='auto | cpu | cuda | cuda:N (empty: from params_file)'),
        DeclareLaunchArgument('input_size', default_value='', description='network input [H, W] (empty: from params_file)'),
        DeclareLaunchArgument('score_threshold', default_value='', description='score threshold (empty: from params_file)'),
        OpaqueFunction(function=_video_publisher),
        detector,
    ])
